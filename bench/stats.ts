// Timing, summary statistics and the memory sampler the benchmark reports with.
// It must never measure anything itself: callers decide what a repetition is.

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function summarise(values: number[]): Summary {
  if (values.length === 0) throw new Error("no values to summarise");
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { median, min: sorted[0], max: sorted[sorted.length - 1], n: sorted.length };
}

/** The widest spread of a ratio of two measured figures: lowest over highest, highest over lowest. */
export function ratioSpread(a: Summary, b: Summary): [number, number] {
  return [a.min / b.max, a.max / b.min];
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) throw new Error("no values for a percentile");
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1];
}

/** Runs `fn` and returns its result with the wall time in seconds. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const start = performance.now();
  const value = await fn();
  return { value, seconds: (performance.now() - start) / 1000 };
}

/**
 * Samples this process's resident set size every `everyMs` while `fn` runs and returns the peak
 * in bytes, with the RSS just before it started (the process's own floor).
 */
export async function peakRss<T>(
  fn: () => Promise<T>,
  everyMs = 20,
): Promise<{ value: T; peak: number; before: number }> {
  const before = Deno.memoryUsage().rss;
  let peak = before;
  const timer = setInterval(() => {
    const rss = Deno.memoryUsage().rss;
    if (rss > peak) peak = rss;
  }, everyMs);
  try {
    const value = await fn();
    peak = Math.max(peak, Deno.memoryUsage().rss);
    return { value, peak, before };
  } finally {
    clearInterval(timer);
  }
}

export const MB = 1024 * 1024;

/** A compact number for the table: 3 significant digits, thousands grouped. */
export function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const abs = Math.abs(x);
  if (abs >= 1000) return Math.round(x).toLocaleString("en-US");
  if (abs >= 100) return x.toFixed(0);
  if (abs >= 10) return x.toFixed(1);
  if (abs >= 1) return x.toFixed(2);
  return x.toPrecision(2);
}

export function fmtSummary(s: Summary, unit = ""): string {
  const u = unit ? ` ${unit}` : "";
  return `${fmt(s.median)}${u} (${fmt(s.min)}–${fmt(s.max)})`;
}

/** A ratio rounded for the JSON line: 3 significant digits. */
export function round3(x: number): number {
  return Number(x.toPrecision(3));
}
