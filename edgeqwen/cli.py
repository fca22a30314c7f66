"""The `edgeqwen` command line: parses options and calls library functions."""
from __future__ import annotations

import sys

import click

from .errors import EdgeQwenError


class _Group(click.Group):
    """Turns EdgeQwenError (bad input) into one `error:` line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeQwenError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="edgeqwen")
def main():
    """edgeqwen: run Qwen3 GGUF models on the CPU."""


@main.command()
@click.argument("hf_dir", type=click.Path(path_type=str))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=str), help="Output .gguf file.")
@click.option("--type", "out_type", default="f16", show_default=True,
              type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_0"], case_sensitive=False),
              help="Weight type of the matrices (norms stay F32).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("-v", "--verbose", is_flag=True, help="Print each tensor's type and quantization error.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def convert(hf_dir, output, out_type, force, verbose, quiet):
    """Convert a Hugging Face Qwen3 checkpoint directory to GGUF."""
    from converters.hf_to_gguf import convert as do_convert

    s = do_convert(hf_dir, output, out_type.lower(), force=force, verbose=verbose,
                   progress=not quiet and sys.stderr.isatty())
    if not quiet:
        types = ", ".join(f"{n} {k}" for k, n in sorted(s.types.items()))
        click.echo(f"wrote {s.out}: {s.n_tensors} tensors ({types}), "
                   f"{s.out_bytes / 2**20:.1f} MiB in {s.seconds:.1f} s", err=True)
