"""The reference service's request bodies: the types its handlers decode JSON as.

The route table (`examples.vet_tracker.routes`) names each route's body type, so
the OpenAPI document shows exactly what the handler accepts.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

Id = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class AdministrationIn(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    animal_id: Id
    medication_id: Id
    dose: Annotated[int, msgspec.Meta(ge=1, le=1000)]
    given_at: dt.datetime | None = None
    notes: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class LotIn(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    medication_id: Id
    lot: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    expires_on: dt.date
