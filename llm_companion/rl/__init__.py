"""Reinforcement learning with verifiable rewards (chapter 11): a checkable task (:mod:`.tasks`), group sampling
from one prefill (:mod:`.sampling`), GRPO's pieces (:mod:`.grpo`) and trainer (:mod:`.trainer`), and the
inference-time baselines it is compared with (:mod:`.baselines`)."""
