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
--
-- A move that takes effect in the past must not create a cycle at any time
-- from then on (CN001), not only in the current hierarchy: moving X under P
-- from T is refused if X was an ancestor of P at any moment after T. The
-- check walks P's ancestors through the history, interval by interval. As in
-- the Tree, an entity's earliest version also stands for the time before it.

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

    if new.parent_id is not null and explicit_at is not null and explicit_at < now()
       and tg_op = 'UPDATE' and new.parent_id is distinct from old.parent_id then
        if exists (
            with recursive walk (id, lo, hi, steps) as (
                select new.parent_id, explicit_at, 'infinity'::timestamptz, 0
                union all
                select v.parent_id, greatest(w.lo, v.lo), least(w.hi, v.hi), w.steps + 1
                  from walk w
                  cross join lateral (
                      select h.parent_id,
                             case when exists (
                                      select 1 from canopy.entity_history e
                                       where e.id = h.id and e.superseded_by is null
                                         and e.valid_from < h.valid_from
                                         and (e.valid_to is null or e.valid_to > e.valid_from))
                                  then h.valid_from else '-infinity'::timestamptz end as lo,
                             coalesce(h.valid_to, 'infinity'::timestamptz) as hi
                        from canopy.entity_history h
                       where h.id = w.id and h.superseded_by is null
                         and (h.valid_to is null or h.valid_to > h.valid_from)
                  ) v
                 where v.parent_id is not null and v.lo < w.hi and v.hi > w.lo
                   and w.id <> new.id and w.steps < 300
            )
            select 1 from walk where id = new.id
        ) then
            raise exception 'canopy: moving entity % under % from % would make it its own ancestor in the history',
                new.id, new.parent_id, explicit_at
                using errcode = 'CN001';
        end if;
    end if;

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
