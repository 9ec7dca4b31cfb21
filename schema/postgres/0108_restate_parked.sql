-- 0108_restate_parked: hierarchy changes the restater could not apply
-- (issue 14). A change whose restatement fails for a reason that cannot
-- change (its entity has no ancestor chain at the change's version, e.g. a
-- chain past hierarchy.MaxDepth in legacy data) is tried a few times and
-- then parked here; so is every later change whose as-is correction would
-- build on it (depends_on). restated_through moves past parked changes, so
-- the restater, canopy rebuild and the rest of the hierarchy keep going.
--
-- reach: the entities whose rollup_daily_current rows the change would have
--   corrected (its entity's strict ancestors before and after it); those
--   rows stay as they were until canopy rebuild recomputes them.
-- resolved_at: set by a canopy rebuild that covered every day with events
--   at a hierarchy version >= seq. canopy restate status lists the rows
--   where it is null; canopy_restate_parked_changes counts them.
create table if not exists canopy.restate_parked (
    seq         bigint primary key,
    entity_id   bigint      not null,
    error       text        not null,
    depends_on  bigint      null,
    reach       bigint[]    not null default '{}',
    attempts    integer     not null default 0,
    parked_at   timestamptz not null default now(),
    resolved_at timestamptz null
);

create index if not exists restate_parked_unresolved
    on canopy.restate_parked (seq) where resolved_at is null;
