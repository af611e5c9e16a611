"""The demo: the whole loop on one machine, with a stand-in InferenceServer and destination."""
