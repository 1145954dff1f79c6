"""`model-server`: the command line on top of the client.

    model-server predict digits seven.png            7 (99.98 %)
    model-server predict objects cat.jpg --top-k 3
    model-server sentiment "a gripping film" "dull"
    model-server style cat.jpg --preset starry_night -o out.png      (a progress bar on stderr)
    model-server models

--url / MODEL_SERVER_URL and --api-key / MODEL_SERVER_API_KEY say where and who. Errors are one line on stderr,
never a traceback; exit codes: 0 done, 1 the server refused or failed the request, 2 bad usage or an unreadable
input, 3 the server cannot be reached, 4 the style job failed or was cancelled, 5 --wait-timeout ran out,
130 interrupted (a style job being waited for is cancelled).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from model_server_client import __version__
from model_server_client._base import API_KEY_ENV, DEFAULT_URL, URL_ENV
from model_server_client.client import Client, StyleJob
from model_server_client.errors import (APIError, AuthenticationError, InputError, JobError, ModelServerError,
                                        TransportError, WaitTimeout)
from model_server_client.progress import ProgressBar
from model_server_client.datatypes import Prediction

PROG = "model-server"
EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_JOB, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
STYLE_OPTIONS = ("size", "steps", "style_weight", "content_weight", "tv_weight", "init", "seed", "style_scale",
                 "style_weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Call the model server: classify digits, photos and text; run style transfer.",
        epilog="exit codes: 0 done, 1 the server refused the request, 2 bad usage or input, 3 server unreachable, "
               "4 style job failed or cancelled, 5 wait timeout, 130 interrupted")
    parser.add_argument("--url", help=f"the server (default ${URL_ENV}, else {DEFAULT_URL})")
    parser.add_argument("--api-key", help=f"API key, sent as a Bearer token (default ${API_KEY_ENV})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries of answers 429 and 503, honouring Retry-After (default 3)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser("models", help="list the models served")
    commands.add_parser("presets", help="list the style presets")

    predict = commands.add_parser("predict", help="classify images: predict digits|objects IMAGE...")
    predict.add_argument("task", choices=("digits", "objects"))
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files ('-' reads one from stdin)")
    _add_model_options(predict)

    sentiment = commands.add_parser("sentiment", help="sentiment of texts: sentiment TEXT...")
    sentiment.add_argument("texts", nargs="+", metavar="TEXT", help="texts ('-' reads one per line from stdin)")
    _add_model_options(sentiment)

    style = commands.add_parser("style", help="stylise a photo: style CONTENT --preset NAME -o OUT")
    style.add_argument("content", metavar="CONTENT", help="the photo")
    style.add_argument("--preset", action="append", default=[], help="a preset painting (repeat for a blend; "
                       "`model-server presets` lists them)")
    style.add_argument("--style", action="append", default=[], metavar="IMAGE", help="a style image file (repeat "
                       "for a blend)")
    style.add_argument("-o", "--output", help="where to write the PNG (default CONTENT-styled.png)")
    style.add_argument("--size", type=int, help="longest side of the output in px")
    style.add_argument("--steps", type=int, help="optimisation steps")
    style.add_argument("--style-weight", type=float)
    style.add_argument("--content-weight", type=float)
    style.add_argument("--tv-weight", type=float)
    style.add_argument("--init", choices=("content", "noise"))
    style.add_argument("--seed", type=int)
    style.add_argument("--style-scale", type=float)
    style.add_argument("--style-weights", help="blend weights, one per style: presets first, then --style images "
                       "(e.g. 0.7,0.3)")
    style.add_argument("--preserve-color", action="store_true", default=None, help="keep the photo's colours")
    _add_wait_options(style)
    style.add_argument("--no-wait", action="store_true", help="print the job id and exit without waiting")

    job = commands.add_parser("job", help="a submitted style job: job status|wait|cancel ID")
    job.add_argument("action", choices=("status", "wait", "cancel"))
    job.add_argument("id", metavar="ID")
    job.add_argument("-o", "--output", help="wait: where to write the PNG")
    _add_wait_options(job)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, help="how many classes to show (default: the best one)")
    parser.add_argument("--model", help="another model of the task (`model-server models` lists them)")


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--wait-timeout", type=float, help="give up waiting after this many seconds (exit 5)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------- output

def _percent(score: float) -> str:
    return f"{score * 100:.2f} %"


def _prediction_text(prediction: Prediction, top_k: Optional[int]) -> str:
    text = f"{prediction.label} ({_percent(prediction.score)})"
    if top_k is not None and top_k > 1:
        text += "  [" + ", ".join(f"{t.label} {_percent(t.score)}" for t in prediction.top) + "]"
    return text


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        data = asdict(value)
        data.pop("raw", None)
        return data
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_plain(value), indent=2, default=str))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------- commands

def _read_images(names: Sequence[str]) -> List[Any]:
    images: List[Any] = []
    for name in names:
        images.append(sys.stdin.buffer.read() if name == "-" else Path(name))
    return images


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        print(json.dumps([m.raw for m in models], indent=2))
        return EXIT_OK
    width = max((len(m.name) for m in models), default=4)
    for m in models:
        accuracy = f"accuracy {m.accuracy * 100:.2f} %" if m.accuracy is not None else ""
        mark = "default" if m.default else ""
        print(f"{m.name:<{width}}  {m.task:<10} {mark:<7}  {m.backend or '-':<11}  {accuracy}".rstrip())
    return EXIT_OK


def cmd_presets(client: Client, args: argparse.Namespace) -> int:
    presets = client.presets()
    if args.json:
        _print_json(presets)
        return EXIT_OK
    width = max((len(p.name) for p in presets), default=4)
    for p in presets:
        print(f"{p.name:<{width}}  {p.title}, {p.artist} ({p.year})")
    return EXIT_OK


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    images = _read_images(args.images)
    method = client.predict_digit if args.task == "digits" else client.predict_object
    predictions = method(images, top_k=args.top_k, model=args.model) if len(images) > 1 else \
        [method(images[0], top_k=args.top_k, model=args.model)]
    if args.json:
        _print_json(predictions if len(predictions) > 1 else predictions[0])
        return EXIT_OK
    for name, prediction in zip(args.images, predictions):
        text = _prediction_text(prediction, args.top_k)
        print(text if len(predictions) == 1 else f"{name}: {text}")
    return EXIT_OK


def cmd_sentiment(client: Client, args: argparse.Namespace) -> int:
    texts: List[str] = []
    for text in args.texts:
        texts += [line for line in sys.stdin.read().splitlines() if line.strip()] if text == "-" else [text]
    if not texts:
        raise InputError("no text given")
    predictions = client.sentiment(texts, top_k=args.top_k, model=args.model) if len(texts) > 1 else \
        [client.sentiment(texts[0], top_k=args.top_k, model=args.model)]
    if args.json:
        _print_json(predictions if len(predictions) > 1 else predictions[0])
        return EXIT_OK
    for text, prediction in zip(texts, predictions):
        line = _prediction_text(prediction, args.top_k)
        print(line if len(predictions) == 1 else f"{line}\t{text}")
    return EXIT_OK


def cmd_style(client: Client, args: argparse.Namespace) -> int:
    if not args.preset and not args.style:
        raise InputError("give a style: --preset NAME (`model-server presets` lists them) and/or --style IMAGE")
    options = {name: getattr(args, name) for name in STYLE_OPTIONS}
    if args.preserve_color:
        options["preserve_color"] = True
    output = Path(args.output) if args.output else Path(f"{Path(args.content).stem}-styled.png")
    job = client.style(Path(args.content), preset=args.preset or None,
                       style=[Path(s) for s in args.style] or None, **options)
    if args.no_wait:
        print(job.id)
        return EXIT_OK
    print(f"submitted style job {job.id}", file=sys.stderr)
    return _wait_and_save(job, args, output)


def cmd_job(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.id)
    if args.action == "status":
        _print_job(job, args)
        return EXIT_OK
    if args.action == "cancel":
        job.cancel()
        _print_job(job, args)
        return EXIT_OK
    return _wait_and_save(job, args, Path(args.output) if args.output else None)


def _print_job(job: StyleJob, args: argparse.Namespace) -> None:
    info = job.info
    if args.json:
        print(json.dumps(info.raw, indent=2))
        return
    p = info.progress
    text = f"{info.id} {info.status} step {p.step}/{p.total}"
    if info.queue_position:
        text += f" queue position {info.queue_position}"
    if info.error:
        text += f": {_one_line(info.error)}"
    print(text)


def _wait_and_save(job: StyleJob, args: argparse.Namespace, output: Optional[Path]) -> int:
    progress = False if args.no_progress else ProgressBar(sys.stderr, label=f"job {job.id[:8]}")
    try:
        job.wait(progress=progress, timeout=args.wait_timeout, poll_interval=args.poll_interval)
    except KeyboardInterrupt:
        try:
            job.cancel()
            print(f"\n{PROG}: interrupted: cancelled style job {job.id}", file=sys.stderr)
        except ModelServerError as exc:
            print(f"\n{PROG}: interrupted; style job {job.id} could not be cancelled: {_one_line(str(exc))}",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    if output is None:
        _print_job(job, args)
        return EXIT_OK
    job.save(output)
    print(str(output))
    return EXIT_OK


COMMANDS = {"models": cmd_models, "presets": cmd_presets, "predict": cmd_predict, "sentiment": cmd_sentiment,
            "style": cmd_style, "job": cmd_job}


def _error_line(exc: ModelServerError) -> str:
    text = _one_line(str(exc))
    if isinstance(exc, AuthenticationError):
        text += f" (give --api-key or set {API_KEY_ENV})"
    if isinstance(exc, APIError) and exc.retry_after is not None and exc.status_code in (429, 503):
        text += f" (retry after {exc.retry_after:g} s)"
    return text


def exit_code(exc: ModelServerError) -> int:
    if isinstance(exc, InputError):
        return EXIT_USAGE
    if isinstance(exc, TransportError):
        return EXIT_UNREACHABLE
    if isinstance(exc, JobError):
        return EXIT_JOB
    if isinstance(exc, WaitTimeout):
        return EXIT_TIMEOUT
    return EXIT_API


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Client(args.url, args.api_key, timeout=args.timeout, retries=max(0, args.retries)) as client:
            return COMMANDS[args.command](client, args)
    except ModelServerError as exc:
        print(f"{PROG}: error: {_error_line(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `model-server models | head -1`
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
