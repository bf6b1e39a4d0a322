// tuner's JupyterLab MIME renderers: a run (application/vnd.tuner.run+json) as its metrics table,
// roofline and time breakdown; a sweep (application/vnd.tuner.sweep+json) as its summary, Pareto chart
// and trials table; a serving benchmark (application/vnd.tuner.serve+json) as its table, the queue over
// time and the TTFT / TPOT CDFs. They read only the saved output, so a notebook shows them with no kernel.

import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import {
  breakdownChart,
  cdfChart,
  compareOpsTable,
  compareRooflineChart,
  compareStepsChart,
  compareTable,
  metricsTable,
  paretoChart,
  queueChart,
  rooflineChart,
  serveTable,
  trialsTable
} from './charts';
import {
  COMPARE_MIME,
  measuredTrials,
  parseCompare,
  parseRun,
  parseServe,
  parseSweep,
  RUN_MIME,
  SERVE_MIME,
  SWEEP_MIME
} from './data';

function heading(s: string): HTMLElement {
  const h = document.createElement('div');
  h.className = 'tuner-heading';
  h.textContent = s;
  return h;
}

function problem(node: HTMLElement, err: unknown): void {
  const p = document.createElement('pre');
  p.className = 'tuner-error';
  p.textContent = `tuner: cannot render this output: ${(err as Error).message ?? err}`;
  node.appendChild(p);
}

/** One tuner output: `draw` fills the node from the record, or the node says why it cannot. */
export class TunerRenderer extends Widget implements IRenderMime.IRenderer {
  constructor(
    private readonly mime: string,
    kind: string,
    private readonly draw: (node: HTMLElement, data: unknown) => void
  ) {
    super();
    this.addClass('tuner-output');
    this.addClass(`tuner-${kind}`);
  }

  renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    this.node.textContent = '';
    try {
      this.draw(this.node, model.data[this.mime]);
    } catch (e) {
      problem(this.node, e);
    }
    return Promise.resolve();
  }
}

function drawRun(node: HTMLElement, data: unknown): void {
  const run = parseRun(data);
  node.appendChild(heading(`tuner run ${run.run_id}`));
  node.appendChild(metricsTable(run));
  if (run.ops && run.ops.length) {
    const charts = document.createElement('div');
    charts.className = 'tuner-charts';
    charts.appendChild(rooflineChart(run));
    charts.appendChild(breakdownChart(run));
    node.appendChild(charts);
  }
}

function drawSweep(node: HTMLElement, data: unknown): void {
  const sweep = parseSweep(data);
  const n = measuredTrials(sweep);
  node.appendChild(
    heading(
      `tuner sweep ${sweep.study_name}: ${n.length} trials, ${n.filter(t => t.feasible).length} feasible; ` +
        `${sweep.objectives.join(', ')}` +
        (sweep.constraints.length ? ` subject to ${sweep.constraints.join(', ')}` : '')
    )
  );
  node.appendChild(paretoChart(sweep));
  node.appendChild(trialsTable(sweep));
}

function drawServe(node: HTMLElement, data: unknown): void {
  const s = parseServe(data);
  node.appendChild(heading(`tuner serve-bench ${s.run_id}`));
  node.appendChild(serveTable(s));
  const charts = document.createElement('div');
  charts.className = 'tuner-charts';
  charts.appendChild(queueChart(s));
  charts.appendChild(cdfChart(s, 'ttft_ms', 'TTFT'));
  charts.appendChild(cdfChart(s, 'tpot_ms', 'TPOT'));
  node.appendChild(charts);
}

function drawCompare(node: HTMLElement, data: unknown): void {
  const c = parseCompare(data);
  node.appendChild(heading(`tuner compare: ${c.runs.map((r, i) => `${c.names[i]} ${r.run_id}`).join(', ')}`));
  node.appendChild(compareTable(c));
  const charts = document.createElement('div');
  charts.className = 'tuner-charts';
  if (c.runs.slice(0, 2).every(r => (r.timings?.decode_step_ms ?? []).length > 1)) {
    charts.appendChild(compareStepsChart(c));
  }
  if (c.runs.slice(0, 2).every(r => (r.ops ?? []).length)) {
    charts.appendChild(compareRooflineChart(c));
  }
  node.appendChild(charts);
  if (c.runs.some(r => (r.ops ?? []).length)) {
    node.appendChild(compareOpsTable(c));
  }
}

const extensions: IRenderMime.IExtension[] = [
  {
    id: 'tuner-jupyterlab:run',
    rendererFactory: {
      safe: true,
      mimeTypes: [RUN_MIME],
      createRenderer: () => new TunerRenderer(RUN_MIME, 'run', drawRun)
    },
    rank: 0,
    dataType: 'json'
  },
  {
    id: 'tuner-jupyterlab:sweep',
    rendererFactory: {
      safe: true,
      mimeTypes: [SWEEP_MIME],
      createRenderer: () => new TunerRenderer(SWEEP_MIME, 'sweep', drawSweep)
    },
    rank: 0,
    dataType: 'json'
  },
  {
    id: 'tuner-jupyterlab:serve',
    rendererFactory: {
      safe: true,
      mimeTypes: [SERVE_MIME],
      createRenderer: () => new TunerRenderer(SERVE_MIME, 'serve', drawServe)
    },
    rank: 0,
    dataType: 'json'
  },
  {
    id: 'tuner-jupyterlab:compare',
    rendererFactory: {
      safe: true,
      mimeTypes: [COMPARE_MIME],
      createRenderer: () => new TunerRenderer(COMPARE_MIME, 'compare', drawCompare)
    },
    rank: 0,
    dataType: 'json'
  }
];

export default extensions;
