// Validates ServiceMonitors (a JSON array, from `validate.py rendered --service-monitors-json`)
// against Prometheus Operator's schema, as packaged by @kubernetes-models/prometheus-operator
// (types, required fields, patterns such as durations; unknown fields are checked by
// validate.py). The packages live in $SHOAL_CHART_NPM/node_modules (check.sh runs `npm ci`
// there from e2e/chart/package-lock.json).
//
//   node e2e/chart/validate-servicemonitors.mjs MONITORS.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const npm = process.env.SHOAL_CHART_NPM;
if (!npm) {
  console.error("validate-servicemonitors: set SHOAL_CHART_NPM to the dir with node_modules");
  process.exit(2);
}
const module = join(npm, "node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js");
const { ServiceMonitor } = await import(pathToFileURL(module).href);

const monitors = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const m of monitors) {
  try {
    new ServiceMonitor(m).validate();
    console.log(`  ok   ServiceMonitor/${m.metadata.name} (Prometheus Operator schema)`);
  } catch (e) {
    failed++;
    console.error(`  FAIL ServiceMonitor/${m.metadata.name}: ${e.message}`);
  }
}
// A monitor with a malformed scrape interval must fail, or this check checks nothing.
const broken = structuredClone(monitors[0] ?? { apiVersion: "monitoring.coreos.com/v1", kind: "ServiceMonitor", metadata: { name: "probe" }, spec: { selector: {}, endpoints: [{}] } });
broken.spec.endpoints[0].interval = "30 seconds";
try {
  new ServiceMonitor(broken).validate();
  failed++;
  console.error("  FAIL the schema accepted a ServiceMonitor with interval `30 seconds`");
} catch {
  // expected
}
process.exit(failed ? 1 : 0);
