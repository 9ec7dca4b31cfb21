-- 0001_hierarchy: the hierarchy, its history and its outbox.
--
-- Applications change canopy.entities with plain SQL; the triggers below
-- validate every change (no unknown or closed parent, no cycle), then record
-- it in canopy.entity_history (validity intervals, for as-was attribution) and
-- canopy.outbox (relayed to Kafka in commit order).
--
-- Error codes raised here (the Go store maps them to sentinel errors):
--   CN001 cycle            CN002 closed parent     CN003 unknown parent
--   CN004 delete refused   CN005 back-dated change CN006 id change refused
--   CN007 structural change under REPEATABLE READ
--
-- Session settings read here:
--   canopy.effective_at  when set (SET LOCAL), the time the change takes
--                        effect; default now().
--   canopy.bulk = 'on'   the row triggers do nothing (their WHEN clauses skip
--                        even the function call, which matters at 1M rows);
--                        the bulk importer checks
--                        the same rules with set-based queries and writes
--                        history and outbox itself.

create schema if not exists canopy;

create table if not exists canopy.entities (
    id         bigint primary key check (id > 0),
    parent_id  bigint null references canopy.entities (id),
    status     text not null default 'active'
               check (status in ('active', 'suspended', 'closed')),
    name       text,
    updated_at timestamptz not null default now(),
    constraint entities_parent_not_self check (parent_id is null or parent_id <> id)
);
create index if not exists entities_parent_id_idx on canopy.entities (parent_id);

create sequence if not exists canopy.entity_history_seq as bigint;
create table if not exists canopy.entity_history (
    seq         bigint primary key default nextval('canopy.entity_history_seq'),
    id          bigint not null,
    parent_id   bigint,
    status      text not null,
    name        text,
    valid_from  timestamptz not null,
    valid_to    timestamptz null, -- null = current version
    recorded_at timestamptz not null default now(),
    constraint entity_history_interval check (valid_to is null or valid_to >= valid_from)
);
alter sequence canopy.entity_history_seq owned by canopy.entity_history.seq;
create index if not exists entity_history_id_valid_from_idx
    on canopy.entity_history (id, valid_from);
-- At most one open version per entity: a bug that forgets to close a row
-- fails loudly instead of producing overlapping intervals.
create unique index if not exists entity_history_current_idx
    on canopy.entity_history (id) where valid_to is null;

create table if not exists canopy.outbox (
    seq          bigserial primary key,
    entity_id    bigint not null,
    op           text not null check (op in ('insert', 'update')),
    parent_id    bigint,
    status       text not null,
    name         text,
    effective_at timestamptz not null,
    recorded_at  timestamptz not null default clock_timestamp(),
    txid         xid8 not null default pg_current_xact_id(),
    history_seq  bigint not null -- the entity_history row this change wrote
);

-- Every change that writes history takes this transaction-scoped lock
-- (7161126307403202561 = 'canopy' || 0x0001; hierarchy.lockKey in Go).
-- Holding it until commit makes two things true: concurrent moves cannot
-- together create a cycle (each checks against the other's committed result),
-- and history and outbox sequence numbers are assigned in commit order, so a
-- reader that follows seq never skips a change that commits late.

create or replace function canopy.entities_before_write() returns trigger
language plpgsql as $$
declare
    parent_status text;
    cur           bigint;
    steps         int := 0;
begin
    if current_setting('canopy.bulk', true) = 'on' then
        return new;
    end if;
    if tg_op = 'UPDATE' and new.id <> old.id then
        raise exception 'canopy: the id of entity % cannot change', old.id
            using errcode = 'CN006';
    end if;
    if tg_op = 'UPDATE'
       and new.parent_id is not distinct from old.parent_id
       and new.status = old.status
       and new.name is not distinct from old.name then
        -- Nothing recorded changes: no lock, no history.
        new.updated_at := old.updated_at;
        return new;
    end if;

    perform pg_advisory_xact_lock(7161126307403202561);

    if new.parent_id is not null
       and (tg_op = 'INSERT' or new.parent_id is distinct from old.parent_id) then
        if tg_op = 'UPDATE'
           and current_setting('transaction_isolation') = 'repeatable read' then
            -- A REPEATABLE READ snapshot predates the lock, so the cycle walk
            -- below could miss a concurrent move that committed meanwhile.
            raise exception 'canopy: moving entity % requires READ COMMITTED or SERIALIZABLE isolation', new.id
                using errcode = 'CN007';
        end if;
        select e.status into parent_status from canopy.entities e where e.id = new.parent_id;
        if not found then
            raise exception 'canopy: parent % of entity % does not exist', new.parent_id, new.id
                using errcode = 'CN003';
        end if;
        if parent_status = 'closed' then
            raise exception 'canopy: parent % of entity % is closed', new.parent_id, new.id
                using errcode = 'CN002';
        end if;
        if tg_op = 'UPDATE' then
            -- An insert cannot close a cycle: nothing can point at a new id yet.
            cur := new.parent_id;
            while cur is not null loop
                if cur = new.id then
                    raise exception 'canopy: moving entity % under % would create a cycle', new.id, new.parent_id
                        using errcode = 'CN001';
                end if;
                steps := steps + 1;
                if steps > 100000 then
                    raise exception 'canopy: ancestors of entity % do not reach a root', new.parent_id
                        using errcode = 'CN001';
                end if;
                select e.parent_id into cur from canopy.entities e where e.id = cur;
            end loop;
        end if;
    end if;
    new.updated_at := now();
    return new;
end
$$;

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
    effective := coalesce(explicit_at, now());

    select h.valid_from into last_from
      from canopy.entity_history h
     where h.id = new.id and h.valid_to is null;
    if found then
        if effective < last_from then
            if explicit_at is not null then
                raise exception 'canopy: back-dated change before the entity''s last change is not supported yet (entity %, effective_at %, last change %)',
                    new.id, effective, last_from
                    using errcode = 'CN005';
            end if;
            -- now() is the transaction's start; a transaction that waited for
            -- the lock can start before the change it follows. Implicit time
            -- never goes backwards.
            effective := last_from;
        end if;
        update canopy.entity_history
           set valid_to = effective
         where id = new.id and valid_to is null;
    end if;

    insert into canopy.entity_history (id, parent_id, status, name, valid_from)
    values (new.id, new.parent_id, new.status, new.name, effective)
    returning seq into hseq;
    insert into canopy.outbox (entity_id, op, parent_id, status, name, effective_at, history_seq)
    values (new.id, lower(tg_op), new.parent_id, new.status, new.name, effective, hseq);
    return null;
end
$$;

create or replace function canopy.entities_refuse_delete() returns trigger
language plpgsql as $$
begin
    if tg_op = 'TRUNCATE' then
        raise exception 'canopy: entities cannot be deleted: close them instead'
            using errcode = 'CN004';
    end if;
    raise exception 'canopy: entity % cannot be deleted: close the entity instead', old.id
        using errcode = 'CN004';
end
$$;

drop trigger if exists entities_before_write on canopy.entities;
create trigger entities_before_write
    before insert or update on canopy.entities
    for each row
    when (current_setting('canopy.bulk', true) is distinct from 'on')
    execute function canopy.entities_before_write();

drop trigger if exists entities_after_insert on canopy.entities;
create trigger entities_after_insert
    after insert on canopy.entities
    for each row
    when (current_setting('canopy.bulk', true) is distinct from 'on')
    execute function canopy.entities_after_write();

drop trigger if exists entities_after_update on canopy.entities;
create trigger entities_after_update
    after update on canopy.entities
    for each row
    when (current_setting('canopy.bulk', true) is distinct from 'on'
          and (old.parent_id is distinct from new.parent_id
               or old.status is distinct from new.status
               or old.name is distinct from new.name))
    execute function canopy.entities_after_write();

drop trigger if exists entities_refuse_delete on canopy.entities;
create trigger entities_refuse_delete
    before delete on canopy.entities
    for each row execute function canopy.entities_refuse_delete();

drop trigger if exists entities_refuse_truncate on canopy.entities;
create trigger entities_refuse_truncate
    before truncate on canopy.entities
    for each statement execute function canopy.entities_refuse_delete();
