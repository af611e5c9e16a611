"""Receiving: the Store SCP, safe paths, atomic writes, and the folder inbox."""
