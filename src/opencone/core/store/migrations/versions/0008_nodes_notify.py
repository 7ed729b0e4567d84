"""The fleet (PostgreSQL only): a change of a node's report is NOTIFY'd on ``opencone_nodes``, so every
replica keeps its view of the nodes fresh without reading the table at each create (fleet/replica.py).

A row inserted, deleted, or updated in what placement reads (heartbeat, state, address, capacity) sends the
row as JSON; a reservation or its confirmation (the counters a create moves, once per create) sends
nothing: the reservation statement itself is the check, and its RETURNING row updates the replica that
made it. A trigger rather than the writers' own NOTIFY: any writer (an agent, the controller, an operator's
``UPDATE nodes SET state = 'draining'``) is heard.

Revision ID: 0008_nodes_notify
Revises: 0007_fleet_objects
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008_nodes_notify"
down_revision = "0007_fleet_objects"
branch_labels = None
depends_on = None

CHANGED = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in (
    "heartbeat_at", "state", "url", "incarnation", "capacity_browser", "capacity_desktop", "ray_node_id"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION opencone_nodes_notify() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('opencone_nodes', json_build_object('id', OLD.id, 'deleted', true)::text);
            ELSE
                PERFORM pg_notify('opencone_nodes', row_to_json(NEW)::text);
            END IF;
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql""")
    op.execute("CREATE TRIGGER nodes_notify_insert_delete AFTER INSERT OR DELETE ON nodes "
               "FOR EACH ROW EXECUTE FUNCTION opencone_nodes_notify()")
    op.execute(f"CREATE TRIGGER nodes_notify_update AFTER UPDATE ON nodes FOR EACH ROW WHEN ({CHANGED}) "
               "EXECUTE FUNCTION opencone_nodes_notify()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS nodes_notify_update ON nodes")
    op.execute("DROP TRIGGER IF EXISTS nodes_notify_insert_delete ON nodes")
    op.execute("DROP FUNCTION IF EXISTS opencone_nodes_notify()")
