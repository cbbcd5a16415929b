"""The voice library: voices, their reference audio, and the libraries imported into it.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "voices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("design", sa.Text(), nullable=True),
        sa.Column("ref_text", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("has_audio", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created", sa.Float(), nullable=False),
        sa.CheckConstraint("kind IN ('design', 'clone')", name="voice_kind"),
    )
    op.create_index("voices_by_created", "voices", ["created"])
    # Audio apart from the voice, so listing the library never reads it.
    op.create_table(
        "voice_audio",
        sa.Column("voice_id", sa.String(32), sa.ForeignKey("voices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("content_key", sa.String(64), nullable=False),
        sa.Column("sample_rate", sa.Integer(), nullable=False),
        sa.Column("wav", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "imported_libraries",
        sa.Column("source", sa.String(1024), primary_key=True),
        sa.Column("voices", sa.Integer(), nullable=False),
        sa.Column("imported", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("imported_libraries")
    op.drop_table("voice_audio")
    op.drop_index("voices_by_created", "voices")
    op.drop_table("voices")
