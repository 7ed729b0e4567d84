"""Fleet mode (OPENCONE_FLEET=ray): computers on many machines, records in PostgreSQL.

Nothing here is imported in local mode. ``registry`` is the nodes table, ``placement`` picks a node for a
create and reserves its slot; ``ray/`` starts and supervises the node agents; ``replica`` routes requests.
"""
