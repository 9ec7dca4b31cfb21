#!/usr/bin/env python3
"""scripts/chdb-server.py — a current ClickHouse server (26.9) for the tests, from PyPI's chdb-core.

    python chdb-server.py --config-dir DIR --data-dir DIR

scripts/services runs it (service "clickhouse26") from a venv where `pip install chdb-core==26.9.0`
put the whole ClickHouse engine, chdb/_chdb.abi3.so. chdb's public API cannot listen, but its
internal entry _chdb.query(sql, format, path=DATA_DIR) runs clickhouse-local's server code, which
reads config.xml from the current directory (listen_host, tcp_port, http_port, users_config,
...). One call that starts the native and HTTP listeners and then runs a query that never ends
keeps a real server up; the call returns only when the process is told to stop (SIGTERM or
SIGINT end it at once: MergeTree parts are renamed into place whole, so a stop loses at most an
insert that was not yet acknowledged, as a crash of a real server would).

Limits of this route (chdb-core 26.9.0; the entry point is private, hence the pinned version):
  - clickhouse-local keeps users only in users_config (users.xml, read-only): CREATE USER fails
    with ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND, so scripts/services declares Canopy's users
    there, with the grants and constraints `canopy migrate` would give them;
  - _chdb.query may be called once per process: this process is the server and nothing else;
  - no embedded Keeper, so no Replicated tables (Canopy picks non_replicated_deduplication_window).
"""

import argparse
import os
import signal
import sys

# Sleeps one row every 3 s for about 95 years: the listeners live as long as this query runs.
# max_execution_time = 0 keeps a profile's limit from ending it.
FOREVER = ("SELECT sleepEachRow(3) FROM numbers(1000000000) FORMAT Null "
           "SETTINGS max_block_size = 1, max_threads = 1, max_execution_time = 0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", required=True, help="directory holding config.xml")
    parser.add_argument("--data-dir", required=True, help="ClickHouse's path: databases, tables, parts")
    args = parser.parse_args()

    config_dir = os.path.abspath(args.config_dir)
    data_dir = os.path.abspath(args.data_dir)
    if not os.path.isfile(os.path.join(config_dir, "config.xml")):
        print(f"chdb-server: no config.xml in {config_dir}", file=sys.stderr)
        return 2
    os.makedirs(data_dir, exist_ok=True)

    # Leave at once on SIGTERM/SIGINT (Python would only notice between bytecodes, and the
    # query below never returns to the interpreter).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    os.chdir(config_dir)   # clickhouse-local reads ./config.xml
    import chdb            # noqa: E402  (loads the engine; it chdirs to its package and back)
    from chdb import _chdb  # noqa: E402

    print(f"chdb-server: ClickHouse {chdb.engine_version} (chdb-core {chdb.__version__}), "
          f"config {config_dir}/config.xml, data {data_dir}", file=sys.stderr, flush=True)
    try:
        _chdb.query("SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; " + FOREVER,
                    "TabSeparated", path=data_dir)
    except Exception as e:  # noqa: BLE001  (any failure of the engine ends the server)
        print(f"chdb-server: {e}", file=sys.stderr, flush=True)
        return 1
    print("chdb-server: the endless query returned; stopping", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
