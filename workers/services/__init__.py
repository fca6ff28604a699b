"""Singleton services on one boundary: the interface (`SingletonService`), the built-ins'
adapters, a team's own services, and the registry the node, tasks, status and metrics use."""

from workers.services.base import Gauge, Row, RunningWork, Section, Sender, SingletonService
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
)

__all__ = [
    "SECTIONS",
    "CustomService",
    "Gauge",
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
]
