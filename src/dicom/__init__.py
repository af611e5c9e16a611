"""DICOM helpers shared by the stages: reading sort tags, telling DICOM files from the rest."""
