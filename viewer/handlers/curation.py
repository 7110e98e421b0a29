"""What curators change about a dataset: its visibility and release date, and its members."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field

from annotations.access import AccessRecord, MemberRecord
from viewer.handlers.base import BaseHandler


class VisibilityBody(BaseModel):
    visibility: str = Field(max_length=16)
    release_date: date | None = None


class MemberBody(BaseModel):
    role: str = Field(max_length=16)


def access_json(record: AccessRecord) -> dict[str, object]:
    return record.model_dump(mode="json")


class VisibilityHandler(BaseHandler):
    """GET a dataset's visibility; PUT {"visibility": "public"|"private", "release_date": "YYYY-MM-DD"}."""

    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.write_json(access_json(AccessRecord(dataset=dataset.name, visibility=dataset.visibility,
                                                 release_date=dataset.release_date, public=dataset.public)))

    async def put(self, dataset_ref: str) -> None:
        body: VisibilityBody = await self.parse_body(VisibilityBody)
        record = await self.services.call(
            self.services.access.set_visibility, dataset_ref, body.visibility, body.release_date
        )
        self.services.identity.forget()
        self.write_json(access_json(record))


class MembersHandler(BaseHandler):
    """GET a dataset's members and their roles (curators, admins)."""

    async def get(self, dataset_ref: str) -> None:
        members: list[MemberRecord] = await self.services.call(self.services.access.members, dataset_ref)
        self.write_json({"members": [m.model_dump() for m in members]})


class MemberHandler(BaseHandler):
    """PUT {"role": "viewer"|"annotator"|"curator"} an account's membership; DELETE it."""

    async def put(self, dataset_ref: str, account: str) -> None:
        body: MemberBody = await self.parse_body(MemberBody)
        record = await self.services.call(self.services.access.set_member, dataset_ref, account, body.role)
        self.services.identity.forget()
        self.write_json(record.model_dump())

    async def delete(self, dataset_ref: str, account: str) -> None:
        removed = await self.services.call(self.services.access.remove_member, dataset_ref, account)
        self.services.identity.forget()
        self.write_json({"account": account, "removed": removed})
