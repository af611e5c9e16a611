"""De-identification of what leaves the hospital, and re-identification of what comes back
(DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile)."""
