"""Singleton services on one boundary: the interface (`SingletonService`), the two built-in
services (`folder_monitor/`, `app_script/`, each all its own code behind the interface), a
team's own services, and the registry the node, tasks, status and metrics use."""

from workers.services.base import (
    Gauge,
    HandOver,
    KeepsLedger,
    ReadsWithTicks,
    Row,
    RunningWork,
    Section,
    Sender,
    SingletonService,
)
from workers.services.custom import CustomService, ServiceFence
from workers.services.registry import (
    SECTIONS,
    check_all,
    declare,
    known_services,
    run_work,
    running_here,
    running_work,
    services_for,
    status_sections,
    tick_reads,
)

__all__ = [
    "SECTIONS",
    "CustomService",
    "Gauge",
    "HandOver",
    "KeepsLedger",
    "ReadsWithTicks",
    "Row",
    "RunningWork",
    "Section",
    "Sender",
    "ServiceFence",
    "SingletonService",
    "check_all",
    "declare",
    "known_services",
    "run_work",
    "running_here",
    "running_work",
    "services_for",
    "status_sections",
    "tick_reads",
]
