"""Sending DICOM: delivering the predictions to the destinations with C-STORE."""
