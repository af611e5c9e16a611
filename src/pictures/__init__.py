"""Pictures of series and predictions: PNGs rendered from DICOM files, off the receive path."""
