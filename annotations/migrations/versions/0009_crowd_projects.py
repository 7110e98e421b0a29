"""Citizen Science: projects, versioned workflows, tasks, volunteers, assignments, submissions, rate events.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True)


def _fk(name: str, target: str, nullable: bool = False, ondelete: str = "CASCADE") -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey(target, ondelete=ondelete), nullable=nullable)


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "crowd_projects", _id(),
        _fk("dataset_id", "datasets.id"),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        _fk("image_id", "images.id"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("weighted", sa.Boolean, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        _fk("consensus_layer_id", "annotation_layers.id", nullable=True, ondelete="SET NULL"),
        sa.Column("salt", sa.String(64), nullable=False),
        _fk("created_by", "accounts.id", nullable=True, ondelete="SET NULL"),
        _time("created_at"),
    )
    op.create_index("ix_crowd_projects_dataset_id", "crowd_projects", ["dataset_id"])
    op.create_table(
        "crowd_workflow_versions", _id(),
        _fk("project_id", "crowd_projects.id"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("instructions", sa.Text, nullable=False),
        sa.Column("tutorial", sa.JSON, nullable=False),
        sa.Column("tool", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("task_shape", sa.JSON, nullable=False),
        sa.Column("redundancy", sa.Integer, nullable=False),
        sa.Column("radius_nm", sa.Float, nullable=False),
        _fk("created_by", "accounts.id", nullable=True, ondelete="SET NULL"),
        _time("created_at"),
        sa.UniqueConstraint("project_id", "version"),
    )
    op.create_index("ix_crowd_workflow_versions_project_id", "crowd_workflow_versions", ["project_id"])
    op.create_table(
        "crowd_tasks", _id(),
        _fk("project_id", "crowd_projects.id"),
        sa.Column("lower", sa.JSON, nullable=False),
        sa.Column("upper", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("sort_key", sa.Float, nullable=False),
        sa.Column("gold", sa.Boolean, nullable=False),
        sa.Column("answer", sa.JSON, nullable=True),
        sa.Column("handed_out", sa.Integer, nullable=False),
        sa.Column("submissions", sa.Integer, nullable=False),
        _time("retired_at", nullable=True),
        sa.Column("consensus", sa.JSON, nullable=True),
        _time("created_at"),
    )
    op.create_index("ix_crowd_tasks_pick", "crowd_tasks", ["project_id", "gold", "status", "priority", "sort_key"])
    op.create_table(
        "crowd_volunteers", _id(),
        _fk("account_id", "accounts.id", nullable=True),
        sa.Column("browser_hash", sa.String(64), nullable=True),
        _time("created_at"),
        sa.UniqueConstraint("account_id"),
        sa.UniqueConstraint("browser_hash"),
    )
    op.create_table(
        "crowd_participations",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("crowd_projects.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("volunteer_id", sa.Integer, sa.ForeignKey("crowd_volunteers.id", ondelete="CASCADE"),
                  primary_key=True),
        _time("tutorial_done_at", nullable=True),
        sa.Column("submitted", sa.Integer, nullable=False),
        sa.Column("gold_seen", sa.Integer, nullable=False),
        sa.Column("gold_f1", sa.JSON, nullable=False),
        sa.Column("consensus_f1", sa.JSON, nullable=False),
        sa.Column("quality", sa.Float, nullable=False),
        _time("created_at"),
        _time("last_seen_at"),
    )
    op.create_index("ix_crowd_participations_volunteer_id", "crowd_participations", ["volunteer_id"])
    op.create_table(
        "crowd_assignments", _id(),
        _fk("project_id", "crowd_projects.id"),
        _fk("task_id", "crowd_tasks.id"),
        _fk("volunteer_id", "crowd_volunteers.id"),
        _fk("workflow_version_id", "crowd_workflow_versions.id"),
        sa.Column("status", sa.String(16), nullable=False),
        _time("assigned_at"),
        _time("expires_at"),
        sa.UniqueConstraint("task_id", "volunteer_id"),
    )
    op.create_index("ix_crowd_assignments_open", "crowd_assignments", ["volunteer_id", "project_id", "status"])
    op.create_index("ix_crowd_assignments_expiry", "crowd_assignments", ["project_id", "status", "expires_at"])
    op.create_table(
        "crowd_submissions", _id(),
        _fk("assignment_id", "crowd_assignments.id"),
        _fk("project_id", "crowd_projects.id"),
        _fk("task_id", "crowd_tasks.id"),
        _fk("volunteer_id", "crowd_volunteers.id"),
        _fk("workflow_version_id", "crowd_workflow_versions.id"),
        sa.Column("nothing_here", sa.Boolean, nullable=False),
        sa.Column("marks", sa.JSON, nullable=False),
        sa.Column("gold_f1", sa.Float, nullable=True),
        _time("started_at"),
        _time("created_at"),
        sa.UniqueConstraint("assignment_id"),
    )
    op.create_index("ix_crowd_submissions_project_time", "crowd_submissions", ["project_id", "created_at"])
    op.create_index("ix_crowd_submissions_task", "crowd_submissions", ["task_id"])
    op.create_index("ix_crowd_submissions_volunteer_id", "crowd_submissions", ["volunteer_id"])
    op.create_table(
        "crowd_rate_events", _id(),
        sa.Column("subject", sa.String(100), nullable=False),
        _time("at"),
    )
    op.create_index("ix_crowd_rate_events_subject_at", "crowd_rate_events", ["subject", "at"])


def downgrade() -> None:
    for table in ("crowd_rate_events", "crowd_submissions", "crowd_assignments", "crowd_participations",
                  "crowd_volunteers", "crowd_tasks", "crowd_workflow_versions", "crowd_projects"):
        op.drop_table(table)
