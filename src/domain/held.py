"""When a series round waits for a person: its instances disagree on the patient or study.

One SeriesInstanceUID belongs to one study of one patient (PS3.3 C.7.3.1). Instances of
one series that name two patients (a mix-up at the modality, a merge gone wrong) must not
reach a model as one series: the round is held, with the reason in words, until a person
releases it (`isdr series release`) or has it deleted (`isdr series delete`). The reason
holds counts only, never the IDs themselves: it is shown in logs and by `isdr series`.
"""

from __future__ import annotations

_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def held_reason(patients: int, studies: int) -> str | None:
    """Why a round whose instances name `patients` PatientIDs and `studies`
    StudyInstanceUIDs is held; None when they agree (one of each)."""
    parts = []
    if patients > 1:
        parts.append(f"{_WORDS.get(patients, patients)} patients ({patients} PatientIDs)")
    if studies > 1:
        parts.append(f"{_WORDS.get(studies, studies)} studies ({studies} StudyInstanceUIDs)")
    if not parts:
        return None
    return f"held: instances of {' and '.join(parts)} in one series"
