"""``us3l fleet``: one file of devices and budgets -> one deployment manifest, checked later.

:func:`load_fleet` reads ``FLEET.toml`` (:mod:`.spec`); :func:`plan_fleet` plans every device with
the very run ``us3l bench --budget-ms`` makes and writes the plan folder (:mod:`.plan`, each
device's manifest entry from :mod:`.entry`); :func:`check_fleet` re-measures each planned device's
artifact and verifies its sha256 on the device (:mod:`.check`). The manifest's format, JSON Schema
and reader are in :mod:`.manifest`; ``fleet.csv``, ``fleet.png`` and the terminal table in
:mod:`.outputs`. This package only re-exports their public names.
"""

from __future__ import annotations

from .check import CHECK_STATUSES, CheckConfig, check_device, check_fleet, parse_deployed
from .manifest import MANIFEST_FILE, MANIFEST_FORMAT, read_manifest, schema
from .outputs import fleet_rows, render_fleet_table, write_fleet_csv, write_fleet_plot
from .plan import FleetConfig, FleetPlan, bench_config, plan_fleet
from .spec import FleetDevice, FleetSpec, is_deploy_path, load_fleet

__all__ = ["CHECK_STATUSES", "CheckConfig", "FleetConfig", "FleetDevice", "FleetPlan", "FleetSpec", "MANIFEST_FILE",
           "MANIFEST_FORMAT", "bench_config", "check_device", "check_fleet", "fleet_rows", "is_deploy_path",
           "load_fleet", "parse_deployed", "plan_fleet", "read_manifest", "render_fleet_table", "schema",
           "write_fleet_csv", "write_fleet_plot"]
