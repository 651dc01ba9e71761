/**
 * The monitoring the Helm chart ships: the alerting rules pass promtool's own checks and unit tests, every
 * alert is tested and documented, and the rules and the Grafana dashboard query only metrics the services
 * declare.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
// The hoisted `yaml` is a CommonJS build without named ESM exports, so it is imported whole.
import YAML from 'yaml';

const root = fileURLToPath(new URL('..', import.meta.url));
const promtoolPath = '/usr/bin/promtool';
const rulesPath = 'deploy/helm/shoal/files/prometheus-rules.yaml';
const rulesTestPath = 'test/monitoring/rules.test.yaml';
const dashboardPath = 'deploy/helm/shoal/files/grafana-dashboard.json';
const runbookDoc = 'docs/operations.md';

/** Metrics that no service declares but the monitoring may use. */
const extraMetrics = [
  // Prometheus' own per-target series.
  'up',
  // The agent's peer bytes by locality, which the dashboard charts: allowed whether or not the agent's
  // sources declare it yet.
  'shoal_agent_peer_fetch_bytes_total',
];

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RulesFile {
  groups: { name: string; rules: Rule[] }[];
}
interface RulesTestFile {
  rule_files: string[];
  tests: {
    name?: string;
    alert_rule_test?: { alertname: string; exp_alerts?: unknown[] | null }[];
  }[];
}
interface Target {
  expr?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  uid?: string;
  type: string;
  title: string;
  description?: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query?: unknown;
}
interface Dashboard {
  uid: string;
  title: string;
  tags: string[];
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Variable[] };
}

const read = (path: string) => readFileSync(join(root, path), 'utf8');
const rules = YAML.parse(read(rulesPath)) as RulesFile;
const rulesTest = YAML.parse(read(rulesTestPath)) as RulesTestFile;
const dashboard = JSON.parse(read(dashboardPath)) as Dashboard;

const allRules = rules.groups.flatMap((group) => group.rules);
const alerts = allRules.filter((rule): rule is Rule & { alert: string } => typeof rule.alert === 'string');
/** Every panel, rows and the panels of collapsed rows included. */
const panels = dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
const queryPanels = panels.filter((panel) => panel.type !== 'row');

interface Result {
  code: number;
  output: string;
}

async function promtool(...args: string[]): Promise<Result> {
  try {
    const { stdout, stderr } = await promisify(execFile)(promtoolPath, args, { cwd: root, timeout: 60_000 });
    return { code: 0, output: `${stdout}${stderr}` };
  } catch (err) {
    const failed = err as { code?: unknown; stdout?: string; stderr?: string; message: string };
    const hint = failed.code === 'ENOENT' ? ' (promtool is installed by scripts/install-deps.sh)' : '';
    return {
      code: typeof failed.code === 'number' ? failed.code : -1,
      output: `${failed.message}${hint}\n${failed.stdout ?? ''}${failed.stderr ?? ''}`,
    };
  }
}

/**
 * The metric names the services declare: `name: 'shoal_…'` in any source file, and the first argument of
 * a helper call in a `metrics.ts` (the scheduler declares its index gauges that way). Histograms also
 * expose `_bucket`, `_sum` and `_count` series.
 */
function declaredMetrics(): Set<string> {
  const names = new Set<string>();
  const servicesDir = join(root, 'services');
  for (const service of readdirSync(servicesDir)) {
    const src = join(servicesDir, service, 'src');
    if (!existsSync(src)) continue;
    for (const file of readdirSync(src, { recursive: true, encoding: 'utf8' })) {
      if (!file.endsWith('.ts')) continue;
      const text = readFileSync(join(src, file), 'utf8');
      for (const match of text.matchAll(/\bname:\s*'(shoal_[a-z0-9_]+)'/g)) names.add(match[1]!);
      if (basename(file) === 'metrics.ts')
        for (const match of text.matchAll(/\w\(\s*'(shoal_[a-z0-9_]+)'/g)) names.add(match[1]!);
      for (const match of text.matchAll(/new\s+Histogram\b[^{]*\{\s*name:\s*'(shoal_[a-z0-9_]+)'/g))
        for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${match[1]!}${suffix}`);
    }
  }
  return names;
}

const promqlWords = new Set(
  [
    ['and', 'or', 'unless', 'offset', 'bool', 'atan2', 'inf', 'nan', 'group_left', 'group_right'],
    ['sum', 'min', 'max', 'avg', 'count', 'group', 'stddev', 'stdvar', 'topk', 'bottomk', 'quantile'],
    ['count_values', 'limitk', 'limit_ratio'],
  ].flat(),
);

/**
 * The metric names a PromQL expression selects. Strings, label matchers, ranges and the label lists of
 * `by`, `on` and the like are removed first; what is left is numbers, operators, keywords, function
 * names (followed by a parenthesis) and metric names.
 */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = new Set<string>();
  for (const match of bare.matchAll(/(?<![\w.$:])([A-Za-z_:][\w:]*)(\s*\()?/g)) {
    const [, name, call] = match;
    if (call === undefined && !promqlWords.has(name!.toLowerCase())) names.add(name!);
  }
  return [...names];
}

/** GitHub's anchor for a Markdown heading. */
function anchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

describe('monitoring', () => {
  describe('alerting rules', () => {
    it('pass promtool check rules', async () => {
      expect(existsSync(promtoolPath), 'promtool is installed by scripts/install-deps.sh').toBe(true);
      const result = await promtool('check', 'rules', rulesPath);
      expect(result.code, result.output).toBe(0);
    });

    it('pass their promtool unit tests', async () => {
      const result = await promtool('test', 'rules', rulesTestPath);
      expect(result.code, result.output).toBe(0);
    });

    it('are all tested by the promtool unit tests', () => {
      expect(rulesTest.rule_files).toEqual([`../../${rulesPath}`]);
      const tested = new Set(
        rulesTest.tests.flatMap((test) =>
          (test.alert_rule_test ?? [])
            .filter((check) => (check.exp_alerts ?? []).length > 0)
            .map((check) => check.alertname),
        ),
      );
      expect(alerts.length).toBeGreaterThan(0);
      expect(alerts.map((rule) => rule.alert).filter((name) => !tested.has(name))).toEqual([]);
    });

    it('have a severity, a summary, a description and a runbook in docs/operations.md', () => {
      const anchors = new Set(
        [...read(runbookDoc).matchAll(/^#{1,6}\s+(.+)$/gm)].map((match) => anchor(match[1]!)),
      );
      for (const rule of alerts) {
        expect(rule.labels?.severity, rule.alert).toMatch(/^(critical|warning|info)$/);
        expect(rule.annotations?.summary, rule.alert).toMatch(/\S/);
        expect(rule.annotations?.description, rule.alert).toMatch(/\S/);
        const runbook = rule.annotations?.runbook ?? '';
        expect(runbook, rule.alert).toMatch(new RegExp(`^${runbookDoc}#`));
        expect([...anchors], `${rule.alert}: ${runbook}`).toContain(runbook.slice(runbook.indexOf('#') + 1));
      }
    });

    it('have unique alert names', () => {
      const names = alerts.map((rule) => rule.alert);
      expect(names).toEqual([...new Set(names)]);
    });
  });

  describe('Grafana dashboard', () => {
    it('is identified and versioned as the chart expects', () => {
      expect(dashboard).toMatchObject({ uid: 'shoal-overview', title: 'Shoal', schemaVersion: 39 });
      expect(dashboard.tags).toContain('shoal');
      expect(panels.filter((panel) => panel.type === 'row').map((row) => row.title)).toEqual([
        'Rollout progress',
        'Bytes by source',
        'Cache',
        'Errors',
        'Per-service health',
      ]);
    });

    it('takes its data source and scope from variables', () => {
      const variables = new Map(dashboard.templating.list.map((variable) => [variable.name, variable]));
      expect(variables.get('datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
      for (const name of ['namespace', 'node']) {
        const variable = variables.get(name);
        expect(variable, name).toMatchObject({ type: 'query' });
        expect(JSON.stringify(variable?.query), name).toContain('label_values(');
      }
    });

    it('has unique panel ids and uids', () => {
      const ids = panels.map((panel) => panel.id);
      const uids = panels.map((panel) => panel.uid);
      expect(ids.every((id) => Number.isInteger(id))).toBe(true);
      expect(uids.every((uid) => typeof uid === 'string' && uid.length > 0)).toBe(true);
      expect(ids).toEqual([...new Set(ids)]);
      expect(uids).toEqual([...new Set(uids)]);
    });

    it('queries the ${datasource} variable and describes every panel', () => {
      expect(queryPanels.length).toBeGreaterThan(0);
      for (const panel of queryPanels) {
        expect(panel.datasource?.uid, panel.title).toBe('${datasource}');
        expect(panel.description, panel.title).toMatch(/\S/);
        expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
        for (const target of panel.targets ?? []) {
          expect(target.expr, panel.title).toMatch(/\S/);
          if (target.datasource) expect(target.datasource.uid, panel.title).toBe('${datasource}');
        }
      }
    });

    it('has queries that Prometheus parses', async () => {
      // Grafana's variables replaced by values, each query becomes a recording rule promtool can check.
      const records = queryPanels.flatMap((panel) =>
        (panel.targets ?? []).map((target, index) => ({
          record: `dashboard:panel_${panel.id}_${index}`,
          expr: (target.expr ?? '')
            .replaceAll('$__rate_interval', '5m')
            .replaceAll('$namespace', 'shoal')
            .replaceAll('$node', '.*'),
        })),
      );
      const dir = await mkdtemp(join(tmpdir(), 'shoal-dashboard-'));
      try {
        const file = join(dir, 'dashboard-rules.yaml');
        await writeFile(file, JSON.stringify({ groups: [{ name: 'dashboard', rules: records }] }));
        const result = await promtool('check', 'rules', file);
        expect(result.code, result.output).toBe(0);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });

  describe('metric names', () => {
    const known = declaredMetrics();
    for (const name of extraMetrics) known.add(name);
    for (const rule of allRules) if (rule.record) known.add(rule.record);

    it('are found in the services', () => {
      // A scan that finds nothing would make the checks below pass vacuously.
      for (const name of [
        'shoal_agent_fetch_bytes_total',
        'shoal_scheduler_decision_duration_seconds_bucket',
        'shoal_discovery_provider_last_success_seconds',
        'shoal_scheduler_index_nodes',
      ])
        expect(known).toContain(name);
      expect(known).not.toContain('shoal_agent_fetch_bytes_total_bucket');
    });

    it('are read from PromQL expressions', () => {
      expect(
        metricNames(
          'sum by (namespace, le) (rate(a_bucket{x="}"}[5m] offset 10m)) / on (namespace) group_left b:c:d ' +
            '> 0.25 and histogram_quantile(0.99, e) or vector(1e3) unless time() - f',
        ).sort(),
      ).toEqual(['a_bucket', 'b:c:d', 'e', 'f']);
    });

    it('in the alerting rules are all declared', () => {
      const unknown = allRules.flatMap((rule) =>
        metricNames(rule.expr)
          .filter((name) => !known.has(name))
          .map((name) => `${rule.alert ?? rule.record}: ${name}`),
      );
      expect(unknown).toEqual([]);
    });

    it('in the dashboard are all declared', () => {
      const unknown = queryPanels.flatMap((panel) =>
        (panel.targets ?? []).flatMap((target) =>
          metricNames(target.expr ?? '')
            .filter((name) => !known.has(name))
            .map((name) => `${panel.title}: ${name}`),
        ),
      );
      expect(unknown).toEqual([]);
    });
  });
});
