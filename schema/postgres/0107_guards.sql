-- 0107_guards: limits the database enforces so that nothing it accepts can
-- stall the pipeline later (issue 14).
--
-- Depth. An ancestor chain, the entity included, is at most 255 entities
-- long: hierarchy.MaxDepth, where the worker's Tree stops. Before this
-- migration PostgreSQL accepted chains of up to 100,000 entities; an event
-- of an entity deeper than 255 was then retried and dead-lettered as
-- unknown, and a restatement of such a move failed forever. Now an insert or
-- a parent change that would make any chain longer is refused with
-- SQLSTATE 23514 (check_violation), constraint name entities_max_depth,
-- and a message naming the entity, the chain length and the limit:
--   * an insert under P: P's chain + 1;
--   * a move of X under P: P's chain + the height of X's subtree (X
--     included), so every entity of the moved subtree is covered;
--   * the history too: an insert, and a back-dated move (canopy.effective_at
--     before now), also count P's longest chain at any time the new version
--     covers (for an insert all time, since an entity's earliest version
--     stands for the time before it; for a back-dated move from T on),
--     walked through canopy.entity_history as the cycle check of 0002 does.
--     The moved subtree's height is taken as it is now; combining the two
--     maxima can refuse a back-dated move whose deepest moments do not
--     coincide, never accept one that is too deep for the current subtree.
-- The check runs in its own trigger, after entities_before_write (triggers
-- fire in name order), so it holds the hierarchy lock and a cycle is still
-- refused first with CN001. Both walks stop 256 levels deep, so a normal
-- move costs one index probe per ancestor and one per subtree member. The
-- bulk importer (canopy.bulk = 'on') checks the same limit with set-based
-- queries (hierarchy/import.go).
--
-- Names. An entity's name is at most 256 characters (char_length): longer
-- names are refused with 23514, constraint entities_name_length. The
-- constraint is added NOT VALID, so this migration never fails on a database
-- that already holds longer names; those rows stay, but any later change to
-- such a row must shorten its name. Once they are shortened, an operator may
-- run: alter table canopy.entities validate constraint entities_name_length.

create or replace function canopy.entities_guard_depth() returns trigger
language plpgsql as $$
declare
    lim         constant int := 255; -- hierarchy.MaxDepth
    explicit_at timestamptz;
    since       timestamptz;
    above       int; -- entities in the new parent's chain, the parent included
    below       int := 1; -- levels of the entity's subtree, the entity included
    past        int;
begin
    if current_setting('canopy.bulk', true) = 'on' or new.parent_id is null then
        return new;
    end if;
    if tg_op = 'UPDATE' and new.parent_id is not distinct from old.parent_id then
        return new;
    end if;

    with recursive up (id, n) as (
        select new.parent_id, 1
        union all
        select e.parent_id, up.n + 1
          from up join canopy.entities e on e.id = up.id
         where e.parent_id is not null and up.n <= lim
    )
    select max(n) into above from up;

    if tg_op = 'UPDATE' and above < lim then
        with recursive down (id, n) as (
            select new.id, 1
            union all
            select e.id, d.n + 1
              from down d join canopy.entities e on e.parent_id = d.id
             where d.n + above <= lim -- one level past the limit is enough
        )
        select max(n) into below from down;
    end if;

    if above + below > lim then
        if tg_op = 'INSERT' then
            raise exception 'canopy: entity % under % would have an ancestor chain of % entities, above the limit of % (hierarchy.MaxDepth)',
                new.id, new.parent_id, above + below, lim
                using errcode = 'check_violation', constraint = 'entities_max_depth';
        end if;
        raise exception 'canopy: moving entity % under % would make an ancestor chain of at least % entities (parent chain %, subtree height %), above the limit of % (hierarchy.MaxDepth)',
            new.id, new.parent_id, above + below, above, below, lim
            using errcode = 'check_violation', constraint = 'entities_max_depth';
    end if;

    explicit_at := nullif(current_setting('canopy.effective_at', true), '')::timestamptz;
    if tg_op = 'INSERT' then
        since := '-infinity';
    elsif explicit_at is not null and explicit_at < now() then
        since := explicit_at;
    else
        return new; -- a change from now on: the current hierarchy is all it meets
    end if;

    with recursive walk (id, lo, hi, n) as (
        select new.parent_id, since, 'infinity'::timestamptz, 1
        union all
        select v.parent_id, greatest(w.lo, v.lo), least(w.hi, v.hi), w.n + 1
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
           and w.id <> new.id and w.n <= lim
    )
    select max(n) into past from walk;

    if past + below > lim then
        raise exception 'canopy: % entity % under % from % would give it an ancestor chain of at least % entities in the history (the parent''s chain was % long), above the limit of % (hierarchy.MaxDepth)',
            case tg_op when 'INSERT' then 'inserting' else 'moving' end,
            new.id, new.parent_id, coalesce(explicit_at::text, 'the start'), past + below, past, lim
            using errcode = 'check_violation', constraint = 'entities_max_depth';
    end if;
    return new;
end
$$;

drop trigger if exists entities_guard_depth_insert on canopy.entities;
create trigger entities_guard_depth_insert
    before insert on canopy.entities
    for each row
    when (current_setting('canopy.bulk', true) is distinct from 'on'
          and new.parent_id is not null)
    execute function canopy.entities_guard_depth();

drop trigger if exists entities_guard_depth_update on canopy.entities;
create trigger entities_guard_depth_update
    before update of parent_id on canopy.entities
    for each row
    when (current_setting('canopy.bulk', true) is distinct from 'on'
          and new.parent_id is not null
          and new.parent_id is distinct from old.parent_id)
    execute function canopy.entities_guard_depth();

do $$
begin
    if not exists (select 1 from pg_constraint
                    where conname = 'entities_name_length'
                      and conrelid = 'canopy.entities'::regclass) then
        alter table canopy.entities
            add constraint entities_name_length
            check (name is null or char_length(name) <= 256) not valid;
    end if;
end
$$;
