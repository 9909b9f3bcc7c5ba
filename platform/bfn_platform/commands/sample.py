"""`bfn sample RUN_OR_MODEL_URI`: draw samples, save them as .npy and as a picture (or text)."""
from __future__ import annotations

from bfn_platform.commands.common import add_verbose, command
from bfn_platform.console import console

EPILOG = """examples:
  bfn sample models:/digits@champion --n 64 --steps 100 --out samples/digits
  bfn sample models:/digits@champion --sampler ode2 --steps 10      # a BFN-Solver: 10x fewer network calls
  bfn sample 3f2c9a... --n 16 --steps 1000 --seed 3 --final mode

  bfn sample models:/digits-cond@champion --class 0,1,2,3,4,5,6,7,8,9 --n 50 --guidance 1   # one row per class
  bfn sample models:/digits@champion --mask known.npz          # inpainting: np.savez(known.npz, observed=..., mask=...)
  bfn sample models:/text8@champion --prefix "the history of " --n 8   # text: continue a prompt (--infix 40:TEXT)

conditioning: --class needs a model trained with a conditioning block; ids (or the class names its data records)
are cycled over the --n samples. --guidance W: classifier-free guidance (0: plain conditional, -1: unconditional,
> 0 sharper), combined in the network's output space (default) or in p_O's parameters (--guidance-space params).
--mask FILE: an .npz with arrays observed and mask (bool, True = known), or OBSERVED.npy,MASK.npy; both of the
data's shape (all samples) or (n, *shape); observed as `bfn sample` writes its .npy: floats in [-1, 1] (continuous,
discretised) or class indices (discrete). The samples equal observed where mask is True. --resample R takes
every step R times, stepping back between tries (RePaint's resampling): unknown coordinates agree better with the
known ones, for about R times the network calls (R = 5-10 is typical).

samplers: bfn (the paper's), ode1, ode2 (BFN-Solver 1 / ++2), sde1, sde2 (SDE solvers); each has its own
time grid unless --grid names one (uniform, solver, logsnr). `bfn eval MODEL --quality` measures them.
"""


def register(sub) -> None:
    p = command(sub, "sample", __doc__, help="draw samples from a trained model", epilog=EPILOG)
    p.add_argument("model", metavar="RUN_OR_MODEL_URI", help="run id, runs:/RUN/model, models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=int, default=100, help="sampling steps (default 100)")
    p.add_argument("--sampler", default="bfn", help="bfn (default), ode1, ode2, sde1 or sde2")
    p.add_argument("--grid", help="time grid: uniform, solver or logsnr (default: the sampler's own)")
    p.add_argument("--final", default="sample", help="sample (default: the paper's draw at t = 1) or mode (the reference code's)")
    p.add_argument("--out", default=None, help="output path without extension (default: $BFN_HOME/samples/MODEL)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the noise (default 0): the same seed, the same result")
    p.add_argument("--batch-size", type=int, default=256, help="samples drawn together (default 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: a GPU when there is one (default)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the network's autocast; auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--class", dest="classes", metavar="C[,C...]",
                   help="class id(s) or name(s), cycled over the samples (conditional models only)")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance weight w (default 0: plain conditional; needs --class)")
    p.add_argument("--guidance-space", choices=("output", "params"), default="output",
                   help="combine the network outputs (default) or p_O's parameters")
    p.add_argument("--mask", dest="mask_file", metavar="FILE",
                   help="inpainting: .npz with observed and mask (bool), or OBSERVED.npy,MASK.npy")
    p.add_argument("--prefix", metavar="TEXT", help="text models: every sample starts with TEXT (inpainting)")
    p.add_argument("--infix", metavar="POS:TEXT", help="text models: TEXT fixed at position POS (inpainting)")
    p.add_argument("--resample", type=int, default=1, metavar="R",
                   help="with --mask: take every step R times (RePaint resampling; default 1: off)")
    add_verbose(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from bfn_platform.console import progress_bar
    from bfn_platform.live import log_path, quiet_output
    import re

    from pipelines.sampling import check_guidance_choice, sample_to_files
    from pipelines.tracking import bfn_home

    check_guidance_choice(args.classes, args.guidance, args.guidance_space)  # before the progress display
    out = args.out or str(bfn_home() / "samples" / re.sub(r"[^A-Za-z0-9_.@-]+", "_", args.model).strip("_"))
    with quiet_output(log_path("sample"), args.verbose) as term, progress_bar(term) as bar:
        task = bar.add_task("sample", total=args.n, info=f"{args.n} samples, {args.sampler} x {args.steps} steps")
        files = sample_to_files(args.model, n=args.n, steps=args.steps, out=out, seed=args.seed,
                                batch_size=args.batch_size, device=args.device, sampler=args.sampler, grid=args.grid,
                                final=args.final, precision=args.precision, classes=args.classes,
                                guidance=args.guidance, guidance_space=args.guidance_space, mask_file=args.mask_file,
                                prefix=args.prefix, infix=args.infix, resample=args.resample,
                                on_progress=lambda k: bar.update(task, advance=k))
    console.print("wrote " + ", ".join(str(f) for f in files))
    return 0
