"""``read_document``: a window of a stored document (corpus document or fetched page), for paging
through long texts with ``offset`` and ``length`` (characters)."""

from __future__ import annotations

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from deepscout.memory import source_records
from deepscout.tools.base import DocumentArtifact, ToolContext
from deepscout.tools.tool_building import content_and_artifact_tool
from deepscout.tools.untrusted import wrap_untrusted

NAME = "read_document"
MAX_LENGTH = 200_000


class UnknownSourceError(ToolException, LookupError):
    """No stored document has the requested source id (returned to the model as the tool's error)."""


class ReadDocumentArgs(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"source_id": 12, "offset": 0, "length": 4000}]},
    )

    source_id: int = Field(ge=1, description="The source id shown in search results.")
    offset: int = Field(default=0, ge=0, description="First character to read.")
    length: int = Field(default=4000, ge=1, le=MAX_LENGTH, description="How many characters to read.")


def build_read_document(ctx: ToolContext) -> StructuredTool:
    def read_document(source_id: int, offset: int = 0, length: int = 4000) -> tuple[str, DocumentArtifact]:
        """Read a stored document by source id, from character OFFSET for LENGTH characters."""
        ctx.charge(NAME)
        with ctx.session_factory() as session:
            source = source_records.get_source(session, source_id=source_id)
            if source is None:
                raise UnknownSourceError(
                    f"no stored document has source id {source_id}; use an id from search results"
                )
            total = len(source.text)
            start = min(offset, total)
            end = min(start + length, total)
            text = source.text[start:end]
            title, url, doc_id = source.title, source.final_url or source.url, source.doc_id
            links = (source.meta or {}).get("links") or []
        if links:
            ctx.provenance.add_many((str(link) for link in links), "page")
        artifact: DocumentArtifact = {
            "source_id": source_id,
            "doc_id": doc_id,
            "title": title,
            "url": url,
            "offset": start,
            "end": end,
            "total_chars": total,
            "text": text,
        }
        more = f"; {total - end} more characters from offset {end}" if end < total else ""
        header = f"source {source_id}: {title} (characters {start}-{end} of {total}{more})"
        return wrap_untrusted(f"{header}\n{text}", origin=NAME, label=title), artifact

    return content_and_artifact_tool(
        read_document, name=NAME, args_schema=ReadDocumentArgs, role="read", handle_tool_error=True
    )
