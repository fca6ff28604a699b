"""Each node's own beat schedule: only its heartbeat, on its own queue, at its own phase."""

from beat_schedule.stagger import SlotTimer, Staggered, build_schedule, stagger_phase

__all__ = ["SlotTimer", "Staggered", "build_schedule", "stagger_phase"]
