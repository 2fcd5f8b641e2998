"""RepDistiller's two-stage schedule of AB and FSP: distill in an initialization stage, then train with CE alone.

RepDistiller (``train_student.py``, ``helper/pretrain.py``) trains these methods' term alone for ``--init_epochs``
epochs (over the student and the method's parts) and then sets ``loss_kd = 0`` for the main stage.
:class:`InitStageThenCE` holds that switch once: the ``init_epochs`` / ``main_stage_loss`` validation, the
:class:`~hf_distill.methods.base.InitStage` and the main-stage term (a constant 0, or the term itself when
``main_stage_loss`` is on).
"""

from __future__ import annotations

from torch import Tensor

from .base import DistillationMethod, Features, InitStage, StepInfo


class InitStageThenCE(DistillationMethod):
    """Base of a method whose term drives an initialization stage and is, by default, 0 in the main stage.

    Subclasses call :meth:`set_schedule` in ``__init__`` and implement :meth:`distill_term`. The term is returned
    under the method's registry name in both stages.
    """

    def set_schedule(self, init_epochs: float, main_stage_loss: bool) -> None:
        """Validate and store ``init_epochs`` and ``main_stage_loss`` and set ``init_stage``.

        The stage trains the student too (``train_student=True``) at the main run's learning rate, as RepDistiller.

        Raises:
            ValueError: ``init_epochs < 0``, or no stage and no main-stage term (nothing would be distilled).
        """
        m = self.name
        if init_epochs < 0:
            raise ValueError(f"{m} init_epochs must be >= 0, got {init_epochs}")
        if init_epochs == 0 and not main_stage_loss:
            raise ValueError(
                f"{m} with init_epochs=0 and main_stage_loss=false would distill nothing: set --{m}-init_epochs > 0 "
                f"(RepDistiller: 30) or --{m}-main_stage_loss true."
            )
        self.init_epochs = float(init_epochs)
        self.main_stage_loss = bool(main_stage_loss)
        self.init_stage = (
            InitStage(epochs=init_epochs, learning_rate=None, train_student=True) if init_epochs > 0 else None
        )

    def distill_term(self, student: Features, teacher: Features) -> Tensor:
        """The method's loss term for one batch."""
        raise NotImplementedError

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        if not self.main_stage_loss:
            # RepDistiller: loss_kd = 0 after the init stage; the student trains with CE alone.
            ref = student.maps[self.student_layer_names[0]]
            return {self.name: ref.new_zeros(())}
        return {self.name: self.distill_term(student, teacher)}

    def init_stage_loss(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        return {self.name: self.distill_term(student, teacher)}
