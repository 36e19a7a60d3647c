"""Task packs: which requested task names our generated folders serve, and the lm-eval ``TaskManager`` that runs them.

Offline packs (generated into ``$ENGRAM_LAB_CACHE/eval-tasks``, no download, deterministic from a seed):

    engram_niah_single_<L>, engram_niah_multikey_<L>, engram_niah_multivalue_<L>, engram_niah_multiquery_<L>,
    engram_vt_<L>, and the group engram_ruler_<L>               RULER-style, L tokens long (:mod:`.ruler`)
    engram_needle_<L>                                           the synthetic corpus's own needle documents, L long
    engram_world_knowledge[_cloze][_top<N>]                     MMLU-format questions on the synthetic world
                                                                (:mod:`.world`)
    engram_bbh_fewshot, engram_bbh_zeroshot and their tasks     BBH from local files (:mod:`.bbh`)

Local copies of hub tasks, under lm-eval's own names: ``mmlu*`` with ``mmlu_path``, ``bbh*`` with ``bbh_path``
(:mod:`.local`). Every other name is one of lm-eval's built-in tasks, which may need the hub (:mod:`eval.hub`); only
then does the task manager index lm-eval's ~15,000 built-in tasks (about 15 s).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from eval.tasks import bbh, local, ruler, world
from eval.tasks.common import TaskError

PACK_PREFIX = "engram_"
PACK_NAMES = ("engram_niah_single_<L>", "engram_niah_multikey_<L>", "engram_niah_multivalue_<L>",
              "engram_niah_multiquery_<L>", "engram_vt_<L>", "engram_ruler_<L>", "engram_needle_<L>",
              "engram_world_knowledge[_cloze][_top<N>]", "engram_bbh_fewshot[_<task>]",
              "engram_bbh_zeroshot[_<task>]")


@dataclass
class TaskOptions:
    """How the generated tasks are made.

    Attributes:
        bbh_path: folder of BBH's task files, for ``engram_bbh_*`` (default ``../shared/data/bbh``) and, when given,
            for lm-eval's own ``bbh*`` names too.
        mmlu_path: folder of MMLU's published CSV files; when given, lm-eval's ``mmlu*`` names run on it.
        samples: documents per generated task (default: 500 for RULER-style tasks, as RULER; 500 questions for
            world knowledge, fewer when the world holds fewer facts).
        seed: seed of every generated document.
        ruler_lengths: lengths (tokens) lm-eval's own RULER tasks generate (default: the model's context).
    """

    bbh_path: Path | None = None
    mmlu_path: Path | None = None
    samples: int | None = None
    seed: int = 0
    ruler_lengths: list[int] | None = None


@dataclass
class PreparedTasks:
    """Requested names split into those our generated ``folders`` serve (``local``) and lm-eval's built-ins
    (``hub``), with the ``metadata`` lm-eval's RULER tasks read."""

    folders: list[Path] = field(default_factory=list)
    local: list[str] = field(default_factory=list)
    hub: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def task_manager(self):
        """A ``TaskManager`` over our folders; lm-eval's built-in tasks are indexed only when a hub task is asked."""
        from lm_eval.tasks import TaskManager

        # Local copies override lm-eval's tasks by name on purpose; its one warning per task would bury the output.
        index_log = logging.getLogger("lm_eval.tasks._index")
        level = index_log.level
        index_log.setLevel(logging.ERROR)
        try:
            manager = TaskManager(include_path=[str(f) for f in self.folders] or None,
                                  include_defaults=bool(self.hub), metadata=self.metadata or None)
        finally:
            index_log.setLevel(level)
        unknown = [n for n in self.hub if n not in manager.all_tasks]
        if unknown:
            raise TaskError(f"unknown task(s) {', '.join(unknown)}: neither lm-eval's nor an offline pack "
                             f"({', '.join(PACK_NAMES)})")
        return manager


def pack_folders(name: str, lm, options: TaskOptions) -> list[Path]:
    """The generated folders that serve the offline-pack task or group ``name`` for the model ``lm``."""
    if ruler.NAME.match(name):
        length = int(ruler.NAME.match(name).group(2))
        if length > lm.max_length:
            warnings.warn(f"{name}: {length} tokens exceed the model's context ({lm.max_length}); each prompt is cut "
                          "from the left, instructions first", stacklevel=3)
        return ruler.build(name, lm.tokenizer, options.samples, options.seed)
    if world.NAME.match(name):
        return [world.build(name, lm.trial.data, options.samples, options.seed)]
    if name.startswith(tuple(bbh.GROUPS)):
        return [bbh.build(options.bbh_path)]
    raise TaskError(f"unknown offline task {name}; the packs are {', '.join(PACK_NAMES)}")


def prepare(names: list[str], lm, options: TaskOptions | None = None) -> PreparedTasks:
    """Generate what ``names`` need for the model ``lm`` (an :class:`eval.lm.EngramEvalLM`: its tokenizer sizes the
    RULER-style tasks, its trial config's ``data.synthetic`` is the world asked about)."""
    from lm_eval.tasks import TaskManager

    from eval.hub import hf_tokenizer

    options = options or TaskOptions()
    folders = [f for name in dict.fromkeys(names) if name.startswith(PACK_PREFIX)
               for f in pack_folders(name, lm, options)]
    if options.mmlu_path is not None and any(n.startswith("mmlu") for n in names):
        folders.append(local.mmlu(options.mmlu_path))
    if options.bbh_path is not None and any(n.startswith("bbh") for n in names):
        folders.append(local.bbh(options.bbh_path))
    folders = list(dict.fromkeys(folders))
    served = TaskManager(include_path=[str(f) for f in folders], include_defaults=False).all_tasks if folders else []
    unserved = [n for n in names if n not in served]
    for path, definitions, label in ((options.mmlu_path, local.MMLU_FOLDERS, "MMLU"),
                                     (options.bbh_path, local.BBH_FOLDERS, "BBH")):
        lacking = [n for n in unserved if path is not None and n in local.defined_names(definitions)]
        if lacking:
            raise TaskError(f"{', '.join(lacking)}: not in the local {label} copy at {path} (a group runs only where "
                            "the data of every member is there)")
    missing = [n for n in unserved if n.startswith(PACK_PREFIX)]
    if missing:
        raise TaskError(f"{', '.join(missing)}: no such task in the offline packs ({', '.join(PACK_NAMES)})")
    prepared = PreparedTasks(folders, [n for n in names if n in served], unserved)
    if unserved:  # lm-eval's own RULER tasks size their prompts with the checkpoint's tokenizer
        prepared.metadata = {"tokenizer": str(hf_tokenizer(lm.tokenizer, lm.max_length)),
                             "max_seq_lengths": options.ruler_lengths or [lm.max_length]}
    return prepared


def task_manager(names: list[str], lm, **options):
    """The ``TaskManager`` for ``lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=...)``; ``options`` are
    :class:`TaskOptions` fields."""
    return prepare(names, lm, TaskOptions(**options)).task_manager()
