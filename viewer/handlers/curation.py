"""What curators change about a dataset: its visibility and release date, and its members."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from annotations.access import AccessRecord, MemberRecord
from viewer.apidoc import RELEASE_DATE_IS_PRIVATE, op
from viewer.bodies import Day
from viewer.handlers.base import BaseHandler


class VisibilityBody(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"visibility": "private", "release_date": "2027-06-01"}],
                                          **RELEASE_DATE_IS_PRIVATE}}

    visibility: Literal["public", "private"]
    release_date: Day | None = None


class MemberBody(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"role": "annotator"}]}}

    role: Literal["viewer", "annotator", "curator"]


class MembersOut(BaseModel):
    members: list[MemberRecord]


class RemovedOut(BaseModel):
    account: str
    removed: bool


class VisibilityHandler(BaseHandler):
    """GET a dataset's visibility; PUT {"visibility": "public"|"private", "release_date": "YYYY-MM-DD"}."""

    @op(summary="Whether the dataset is public, private, or private until a release date", response=AccessRecord)
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.write_json(AccessRecord(dataset=dataset.name, visibility=dataset.visibility,
                                     release_date=dataset.release_date, public=dataset.public))

    @op(summary="Make the dataset public or private (curators); a private one may carry a release date",
        body=VisibilityBody, response=AccessRecord)
    async def put(self, dataset_ref: str) -> None:
        body: VisibilityBody = await self.parse_body()
        record = await self.services.call(
            self.services.access.set_visibility, dataset_ref, body.visibility, body.release_date
        )
        self.services.identity.forget()
        self.write_json(record)


class MembersHandler(BaseHandler):
    """GET a dataset's members and their roles (curators, admins)."""

    @op(summary="The dataset's members and their roles (curators)", response=MembersOut)
    async def get(self, dataset_ref: str) -> None:
        members: list[MemberRecord] = await self.services.call(self.services.access.members, dataset_ref)
        self.write_json(MembersOut(members=members))


class MemberHandler(BaseHandler):
    """PUT {"role": "viewer"|"annotator"|"curator"} an account's membership; DELETE it."""

    @op(summary="Give an account a role on the dataset (curators)", body=MemberBody, response=MemberRecord)
    async def put(self, dataset_ref: str, account: str) -> None:
        body: MemberBody = await self.parse_body()
        record = await self.services.call(self.services.access.set_member, dataset_ref, account, body.role)
        self.services.identity.forget()
        self.write_json(record)

    @op(summary="Remove an account's membership (curators)", response=RemovedOut)
    async def delete(self, dataset_ref: str, account: str) -> None:
        removed = await self.services.call(self.services.access.remove_member, dataset_ref, account)
        self.services.identity.forget()
        self.write_json(RemovedOut(account=account, removed=removed))
