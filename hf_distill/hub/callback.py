"""The Hub layer attached to a training run: every ``DistillationTrainer`` gets a :class:`HubCallback` (registered by
``hf_distill/__init__.py``), through which a final save completes the folder for the Hub (card, processor,
training curves, timm / remote-code format) and ``push_to_hub`` uploads it with the Hub layer's checks."""

from __future__ import annotations

from typing import Any

from ..training.outputs import ExportCallback
from .publish import push_folder, save_hook, trainer_model_card
from .upload import hub_call, hub_endpoint


class HubCallback(ExportCallback):
    """Complete the exported folder for the Hub, write the card, and push (see :mod:`hf_distill.hub.publish`)."""

    def on_export(self, trainer: Any, output_dir: str, **kwargs: Any) -> None:
        save_hook(trainer, output_dir, **kwargs)

    def on_model_card(self, trainer: Any, **kwargs: Any) -> None:
        trainer_model_card(trainer, **kwargs)

    def on_push(
        self,
        trainer: Any,
        commit_message: str | None = None,
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        token = token if token is not None else trainer.args.hub_token
        if trainer.hub_model_id is None:  # a Hub that cannot be reached is one line here too
            hub_call(lambda: trainer.init_hf_repo(token=token, private=private), hub_endpoint())
        return push_folder(
            trainer.args.output_dir,
            trainer.hub_model_id,
            token=token,
            private=private if private is not None else trainer.args.hub_private_repo,
            revision=revision if revision is not None else trainer.args.hub_revision,
            commit_message=commit_message,
        )


__all__ = ["HubCallback"]
