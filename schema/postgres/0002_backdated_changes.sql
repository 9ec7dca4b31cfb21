-- 0002_backdated_changes: a change may take effect before the entity's last
-- change. It means "the history was wrong from then on": the versions of the
-- entity that start at or after the effective time are superseded (kept, with
-- an empty interval and the seq of the change that replaced them, so that an
-- ingest batch resolved before the correction can still be replayed exactly),
-- the version in force at that time is cut there, and the new version is
-- current from then on. The restater (docs/hierarchy.md) then corrects the
-- as-was rollups of the affected time range.
--
-- A change may not take effect in the future (CN008): the hierarchy has no
-- notion of scheduled changes.

alter table canopy.entity_history add column if not exists superseded_by bigint;

create or replace function canopy.entities_after_write() returns trigger
language plpgsql as $$
declare
    explicit_at timestamptz;
    effective   timestamptz;
    last_from   timestamptz;
    hseq        bigint;
begin
    if current_setting('canopy.bulk', true) = 'on' then
        return null;
    end if;
    explicit_at := nullif(current_setting('canopy.effective_at', true), '')::timestamptz;
    if explicit_at > clock_timestamp() + interval '1 minute' then
        raise exception 'canopy: a change cannot take effect in the future (entity %, effective_at %)',
            new.id, explicit_at
            using errcode = 'CN008';
    end if;
    effective := coalesce(explicit_at, now());

    select h.valid_from into last_from
      from canopy.entity_history h
     where h.id = new.id and h.valid_to is null;
    if found and effective < last_from and explicit_at is null then
        -- now() is the transaction's start; a transaction that waited for
        -- the lock can start before the change it follows. Implicit time
        -- never goes backwards.
        effective := last_from;
    end if;
    hseq := nextval('canopy.entity_history_seq');
    if found and effective < last_from then
        -- Back-dated: supersede every version from the effective time on,
        -- then cut the one in force at that time.
        update canopy.entity_history
           set valid_to = valid_from, superseded_by = hseq
         where id = new.id and valid_from >= effective and superseded_by is null;
        update canopy.entity_history
           set valid_to = effective
         where id = new.id and valid_from < effective and superseded_by is null
           and (valid_to is null or valid_to > effective);
    elsif found then
        update canopy.entity_history
           set valid_to = effective
         where id = new.id and valid_to is null;
    end if;

    insert into canopy.entity_history (seq, id, parent_id, status, name, valid_from)
    values (hseq, new.id, new.parent_id, new.status, new.name, effective);
    insert into canopy.outbox (entity_id, op, parent_id, status, name, effective_at, history_seq)
    values (new.id, lower(tg_op), new.parent_id, new.status, new.name, effective, hseq);
    return null;
end
$$;
