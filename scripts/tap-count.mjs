// Reads tap's TAP output on stdin and prints "N passed, N failed": the test points directly inside
// each test file (its top-level assertions and subtests), plus a failure for a file that failed
// without a failing point of its own (a crash, a timeout). Each failure is named on a line of its
// own just before the summary, so the last lines of a CI log say what failed.
import { createInterface } from 'node:readline';

let passed = 0;
let fileFailures = 0;
let file = '';
const failures = [];
for await (const line of createInterface({ input: process.stdin })) {
  const subtest = /^# Subtest: (.*)$/.exec(line);
  if (subtest) {
    file = subtest[1];
    fileFailures = 0;
  } else if (/^ {4}ok \d+/.test(line)) passed++;
  // A subtest marked TODO (a known, documented bug) that fails is reported, not counted as failed.
  else if (/^ {4}not ok \d+/.test(line) && !/ # TODO\b/.test(line)) {
    failures.push(`${file} > ${line.trim().replace(/^not ok \d+ - /, '')}`);
    fileFailures++;
  } else if (/^not ok \d+/.test(line)) {
    if (fileFailures === 0)
      failures.push(
        `${file} > ${line.replace(/^not ok \d+ - /, '')} (the file failed without a failing point: a crash or a timeout)`,
      );
    fileFailures = 0;
  } else if (/^ok \d+/.test(line)) fileFailures = 0;
}
for (const failure of failures) console.log(`FAILED: ${failure}`);
console.log(`${passed} passed, ${failures.length} failed`);
