// Prints the benchmark's figures as a table, the goals missed and by how much, and the closing
// line of JSON. It must never assert a goal: the run's exit code says only whether it ran.
import { round3 } from "./stats.ts";

export type RatioKey =
  | "snapshot_vs_copy"
  | "restore_vs_copy"
  | "drift_vs_full"
  | "plan_vs_copy"
  | "storage_vs_source"
  | "second_snapshot_vs_first"
  | "peak_rss_mb_1m"
  | "rss_1m_vs_100k"
  | "other_tenant_p99_ratio";

/** The goals of issue 4: `at least` a floor, or `at most` a ceiling. */
export const GOALS: Record<RatioKey, { bound: "min" | "max"; value: number; text: string }> = {
  snapshot_vs_copy: { bound: "min", value: 0.5, text: "≥ 0.5×" },
  restore_vs_copy: { bound: "min", value: 0.7, text: "≥ 0.7×" },
  drift_vs_full: { bound: "max", value: 0.3, text: "≤ 0.3× the time" },
  plan_vs_copy: { bound: "max", value: 2, text: "≤ 2× the time" },
  storage_vs_source: { bound: "max", value: 1.5, text: "≤ 1.5×" },
  second_snapshot_vs_first: { bound: "max", value: 0.05, text: "≤ 0.05×" },
  peak_rss_mb_1m: { bound: "max", value: 150, text: "< 150 MB" },
  rss_1m_vs_100k: { bound: "max", value: 1.2, text: "≤ 1.2×" },
  other_tenant_p99_ratio: { bound: "max", value: 2, text: "≤ 2×" },
};

export interface Figure {
  key: RatioKey;
  figure: string;
  engine: string;
  baseline: string;
  ratio: number;
  /** min–max of the ratio over the repetitions, where both sides were repeated. */
  spread?: [number, number];
}

/** A figure measured for information, without a goal: [figure, engine, baseline, ratio]. */
export type InfoRow = [string, string, string, string];

export function met(key: RatioKey, ratio: number): boolean {
  const g = GOALS[key];
  return g.bound === "min" ? ratio >= g.value : ratio <= g.value;
}

/** How far a missed goal is: the factor by which the figure must improve. */
export function shortfall(key: RatioKey, ratio: number): string {
  const g = GOALS[key];
  const factor = g.bound === "min" ? g.value / ratio : ratio / g.value;
  const what = key === "peak_rss_mb_1m" ? `${round3(ratio)} MB` : `${round3(ratio)}×`;
  return `${what} against ${g.text}: ${round3(factor)}× ${g.bound === "min" ? "short" : "over"}`;
}

/** Prints a markdown table, each column as wide as its widest cell. */
export function printTable(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    "| " + cells.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |";
  console.log(line(head));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const r of rows) console.log(line(r));
}

export function printReport(figures: Figure[], header: string[], info: InfoRow[] = []): void {
  const head = [
    "figure",
    "engine: median (min–max)",
    "baseline: median (min–max)",
    "ratio",
    "goal",
    "met",
  ];
  const rows = figures.map((f) => [
    f.figure,
    f.engine,
    f.baseline,
    f.key === "peak_rss_mb_1m" ? `${round3(f.ratio)} MB` : `${round3(f.ratio)}` +
      (f.spread ? ` (${round3(f.spread[0])}–${round3(f.spread[1])})` : ""),
    GOALS[f.key].text,
    met(f.key, f.ratio) ? "yes" : "no",
  ]);
  console.log("");
  for (const line of header) console.log(line);
  console.log("");
  printTable(head, rows);
  if (info.length) {
    console.log("");
    printTable(["measured without a goal", "engine", "baseline", "ratio (min–max)"], info);
  }
  const missed = figures.filter((f) => !met(f.key, f.ratio));
  console.log("");
  if (missed.length === 0) console.log("every goal reached");
  for (const f of missed) console.log(`goal missed: ${f.key}: ${shortfall(f.key, f.ratio)}`);
  const json: Record<string, number> = {};
  for (const f of figures) json[f.key] = round3(f.ratio);
  console.log(JSON.stringify(json));
}
