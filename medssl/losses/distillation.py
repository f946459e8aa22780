"""Self-distillation: DINO's teacher–student cross-entropy with centring (Caron et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn

from medssl.losses.precision import full_precision
from medssl.nn.distributed import all_reduce_sum


class DINOLoss(nn.Module):
    """Cross-entropy between the sharpened, centred teacher and the student, over pairs of different views.

    ``student [V_s * B, K]`` and ``teacher [V_t * B, K]`` are stacked view by view (the teacher sees the
    first ``V_t`` views, the global crops). The centre is an EMA of the teacher's mean output over the
    global batch (``center_momentum``), kept in a buffer so checkpoints resume it. Pass the teacher
    temperature of the current step (its warm-up schedule lives with the method).
    """

    center: torch.Tensor

    def __init__(self, dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @full_precision
    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, n_teacher_views: int, teacher_temperature: float = 0.04
    ) -> torch.Tensor:
        n_student_views = student.shape[0] // (teacher.shape[0] // n_teacher_views)
        log_student = torch.log_softmax(student / self.student_temperature, dim=1).chunk(n_student_views)
        target = torch.softmax((teacher.detach() - self.center) / teacher_temperature, dim=1).chunk(n_teacher_views)
        total: torch.Tensor | None = None
        terms = 0
        for t, probs in enumerate(target):
            for s, log_probs in enumerate(log_student):
                if s == t:
                    continue  # never predict a view from itself
                term = (-(probs * log_probs).sum(dim=1)).mean()
                total = term if total is None else total + term
                terms += 1
        if total is None:
            raise ValueError(
                f"DINO needs a student view other than each teacher view; got {n_student_views} student "
                f"and {n_teacher_views} teacher views"
            )
        self.update_center(teacher)
        return total / terms

    @full_precision
    def same_view(
        self, student: torch.Tensor, teacher: torch.Tensor, teacher_temperature: float = 0.04
    ) -> torch.Tensor:
        """The token term of iBOT and Alice: each student token ``[..., N, K]`` predicts the sharpened,
        centred teacher token at the same place of the same view, averaged over tokens; the centre is
        the EMA of the teacher's mean token (use one instance per kind of output: tokens and the global
        output keep separate centres)."""
        log_student = torch.log_softmax(student / self.student_temperature, dim=-1)
        target = torch.softmax((teacher.detach() - self.center) / teacher_temperature, dim=-1)
        loss = (-(target * log_student).sum(dim=-1)).mean()
        self.update_center(teacher.reshape(-1, teacher.shape[-1]))
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        batch_sum = all_reduce_sum(teacher.detach().sum(dim=0, keepdim=True))
        count = all_reduce_sum(torch.tensor(float(teacher.shape[0]), device=teacher.device))
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)
