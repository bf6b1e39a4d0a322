// tuner's JupyterLab MIME renderers: a run (application/vnd.tuner.run+json) as its metrics table,
// roofline and time breakdown; a sweep (application/vnd.tuner.sweep+json) as its summary, Pareto chart
// and trials table. They read only the saved output, so a notebook shows them with no kernel.

import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { breakdownChart, metricsTable, paretoChart, rooflineChart, trialsTable } from './charts';
import { parseRun, parseSweep, RUN_MIME, SWEEP_MIME } from './data';

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

export class RunRenderer extends Widget implements IRenderMime.IRenderer {
  constructor() {
    super();
    this.addClass('tuner-output');
    this.addClass('tuner-run');
  }

  renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    this.node.textContent = '';
    try {
      const run = parseRun(model.data[RUN_MIME]);
      this.node.appendChild(heading(`tuner run ${run.run_id}`));
      this.node.appendChild(metricsTable(run));
      if (run.ops && run.ops.length) {
        const charts = document.createElement('div');
        charts.className = 'tuner-charts';
        charts.appendChild(rooflineChart(run));
        charts.appendChild(breakdownChart(run));
        this.node.appendChild(charts);
      }
    } catch (e) {
      problem(this.node, e);
    }
    return Promise.resolve();
  }
}

export class SweepRenderer extends Widget implements IRenderMime.IRenderer {
  constructor() {
    super();
    this.addClass('tuner-output');
    this.addClass('tuner-sweep');
  }

  renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    this.node.textContent = '';
    try {
      const sweep = parseSweep(model.data[SWEEP_MIME]);
      const n = sweep.trials.filter(t => t.duplicate_of === null || t.duplicate_of === undefined);
      this.node.appendChild(
        heading(
          `tuner sweep ${sweep.study_name}: ${n.length} trials, ${n.filter(t => t.feasible).length} feasible; ` +
            `${sweep.objectives.join(', ')}` +
            (sweep.constraints.length ? ` subject to ${sweep.constraints.join(', ')}` : '')
        )
      );
      this.node.appendChild(paretoChart(sweep));
      this.node.appendChild(trialsTable(sweep));
    } catch (e) {
      problem(this.node, e);
    }
    return Promise.resolve();
  }
}

const extensions: IRenderMime.IExtension[] = [
  {
    id: 'tuner-jupyterlab:run',
    rendererFactory: { safe: true, mimeTypes: [RUN_MIME], createRenderer: () => new RunRenderer() },
    rank: 0,
    dataType: 'json'
  },
  {
    id: 'tuner-jupyterlab:sweep',
    rendererFactory: { safe: true, mimeTypes: [SWEEP_MIME], createRenderer: () => new SweepRenderer() },
    rank: 0,
    dataType: 'json'
  }
];

export default extensions;
