-- L11 across the tree, and seats that follow a neighbour's demand (L4 `server:<name>`, L8, L9).

-- A lease of a renewal key given in place of a lease of the old key: the old lease's id until
-- the neighbour confirms the new one (a renewal request or a sync that lists it); then the old
-- lease is revoked and the column cleared.
ALTER TABLE leases_given ADD COLUMN replaces TEXT;

-- How the lease's seats are set: '' by an administrator (`lease give`), 'assigned' by the key's
-- assignment to `server:<name>` (L4), 'auto' by automatic distribution to a secondary (L8). The
-- last two follow what the neighbour reports it needs, as seats are free (L9).
ALTER TABLE leases_given ADD COLUMN follows TEXT NOT NULL DEFAULT '';

-- A key renewed by the key named here (L11): removed once no lease of it is given or held.
ALTER TABLE licence_keys ADD COLUMN retiring_for TEXT;

-- What a neighbour last reported it needs (L9): its devices unlicensed because no key applies to
-- them, and whether it holds any key it can license with (L8: an auto-distributed key goes to a
-- secondary without).
ALTER TABLE servers ADD COLUMN wants BIGINT NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN has_key BIGINT NOT NULL DEFAULT 1;
ALTER TABLE servers ADD COLUMN wants_at BIGINT NOT NULL DEFAULT 0;

-- Seats of the lease's key the neighbour last reported it needs (in use by its devices, passed
-- on, and wanted by devices without a free seat): with `servers.wants`, what a lease that
-- follows demand is sized to.
ALTER TABLE leases_given ADD COLUMN needed BIGINT NOT NULL DEFAULT 0;
