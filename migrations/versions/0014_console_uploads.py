"""uploads staged in the console, and import jobs with their progress

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "stagedupload",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("program_id", sa.Integer(), sa.ForeignKey("program.id"), nullable=False),
        sa.Column("manager_id", sa.Integer(), sa.ForeignKey("manager.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(500), nullable=False),
        sa.Column("stored_name", sa.String(100), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("batch_name", sa.String(200), nullable=True),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("imported_before_job_id", sa.Integer(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        sa.CheckConstraint("kind IN ('codes', 'creators')", name="ck_stagedupload_kind"),
    )
    op.create_index("ix_stagedupload_program_id", "stagedupload", ["program_id"])
    op.create_table(
        "importjob",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("program_id", sa.Integer(), sa.ForeignKey("program.id"), nullable=False),
        sa.Column("manager_id", sa.Integer(), sa.ForeignKey("manager.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(500), nullable=False),
        sa.Column("stored_name", sa.String(100), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("batch_name", sa.String(200), nullable=True),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("skip_invalid", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rows_total", sa.Integer(), nullable=False),
        sa.Column("rows_done", sa.Integer(), nullable=False),
        sa.Column("imported", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("error", sa.String(64), nullable=True),
        _ts("created_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.CheckConstraint("kind IN ('codes', 'creators')", name="ck_importjob_kind"),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed')",
                           name="ck_importjob_state"),
    )
    op.create_index("ix_importjob_program_sha256", "importjob", ["program_id", "sha256"])


def downgrade() -> None:
    op.drop_index("ix_importjob_program_sha256", table_name="importjob")
    op.drop_table("importjob")
    op.drop_index("ix_stagedupload_program_id", table_name="stagedupload")
    op.drop_table("stagedupload")
