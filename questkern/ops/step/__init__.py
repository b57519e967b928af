from questkern.ops.step.kernel import quest_step, step_plan, step_workspace
from questkern.ops.step.naive import quest_step_ref

__all__ = ["quest_step", "step_plan", "step_workspace", "quest_step_ref"]
