"""`python -m transferkit report DIR`: print a run's report as tables."""

from __future__ import annotations

import argparse
import sys

from transferkit.report import ReportError, figures_line, format_phase, load_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferkit")
    commands = parser.add_subparsers(dest="command", required=True)
    report_command = commands.add_parser(
        "report", help="print the tables of a run's report.json"
    )
    report_command.add_argument(
        "path", help="a run folder (e.g. the example's --out) or a report.json"
    )
    args = parser.parse_args(argv)

    try:
        report = load_report(args.path)
    except (OSError, ReportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Data: {report['dataset']}\n")
    for phase in report["phases"]:
        print(format_phase(phase), end="\n\n")
    print(f"Total: {report['total_seconds']:.1f} s")
    line = figures_line(report)
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
