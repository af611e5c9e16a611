"""The hand-encoded C-STORE command sets read the same as pynetdicom's."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode

from isdr.scu.dimse import BadResponse, c_store_rq, c_store_rsp_fields

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_a_request_decodes_to_what_pynetdicom_encodes() -> None:
    ours = decode(BytesIO(c_store_rq(7, CT, "1.2.3.4")), True, True)
    request = C_STORE()
    request.MessageID, request.Priority = 7, 0
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CT, "1.2.3.4"
    request.DataSet = BytesIO(b"x")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    theirs = decode(BytesIO(encode(message.command_set, True, True) or b""), True, True)
    assert ours == theirs


def test_the_group_length_counts_the_bytes_after_it() -> None:
    encoded = c_store_rq(1, CT, "1.2.3")  # odd-length UID: padded
    assert int.from_bytes(encoded[8:12], "little") == len(encoded) - 12


def response(status: int, message_id: int) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = CT, "1.2.3"
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True) or b""


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC211])
def test_a_response_gives_its_message_id_and_status(status: int) -> None:
    assert c_store_rsp_fields(response(status, 42)) == (0x8001, 42, status)


def test_a_response_without_a_status_is_refused() -> None:
    empty = encode(Dataset(), True, True) or b""
    with pytest.raises(BadResponse):
        c_store_rsp_fields(empty)
