// A small line chart as inline SVG: no chart library, a few hundred bytes.

const WIDTH = 160;
const HEIGHT = 36;
const PAD = 2;

export interface Point {
  at: number;
  value: number;
}

/** One metric over a span: the line, its latest value in words, and the
 * same in the image's accessible name. */
export function Sparkline({
  label,
  points,
  format,
  since,
  until,
}: {
  label: string;
  points: Point[];
  format: (value: number) => string;
  since: number;
  until: number;
}) {
  const latest = points.length ? points[points.length - 1].value : null;
  const max = points.reduce((m, p) => Math.max(m, p.value), 0);
  const span = Math.max(1, until - since);
  const x = (at: number) => PAD + ((at - since) / span) * (WIDTH - 2 * PAD);
  const y = (value: number) => HEIGHT - PAD - (max > 0 ? (value / max) * (HEIGHT - 2 * PAD) : 0);
  const path = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
  const words =
    latest === null ? `${label}: no samples` : `${label}: ${format(latest)} now, at most ${format(max)} in the span`;
  return (
    <figure class="spark" data-metric={label}>
      <figcaption>
        {label}
        <span class="spark-value">{latest === null ? '—' : format(latest)}</span>
      </figcaption>
      <svg viewBox={`0 0 ${WIDTH} ${HEIGHT}`} width={WIDTH} height={HEIGHT} role="img" aria-label={words}>
        <line class="spark-base" x1={PAD} x2={WIDTH - PAD} y1={HEIGHT - PAD} y2={HEIGHT - PAD} />
        {points.length > 1 ? <path class="spark-line" d={path} /> : null}
        {points.length === 1 ? <circle class="spark-dot" cx={x(points[0].at)} cy={y(points[0].value)} r={2} /> : null}
      </svg>
    </figure>
  );
}
