"""A custom reward in a local file, for configs/grpo_dataset.yaml (see the README's "A custom reward").

A config uses it either way:

* by its file, no registering needed: ``{"type": "myrewards.py:mentions_topic"}``;
* by the name it registers, once the file is imported: ``"reward_modules": ["myrewards.py"]`` and
  ``{"type": "mentions_topic"}``.

Both paths are relative to the config file.
"""

from adaptiverl.rewards import completion_text, register_reward


@register_reward("mentions_topic")
def mentions_topic(completions, topic, bonus: float = 1.0, **kwargs):
    """`bonus` when the completion names the row's `topic` (a dataset column; TRL passes it as a keyword)."""
    return [bonus if t.lower() in completion_text(c).lower() else 0.0 for c, t in zip(completions, topic, strict=True)]
