// Reads tap's TAP output on stdin and prints "N passed, N failed": the test points directly inside
// each test file (its top-level assertions and subtests), plus a failure for a file that failed
// without a failing point of its own (a crash, a timeout).
import { createInterface } from 'node:readline';

let passed = 0,
  failed = 0,
  fileFailures = 0;
for await (const line of createInterface({ input: process.stdin })) {
  if (/^ {4}ok \d+/.test(line)) passed++;
  // A subtest marked TODO (a known, documented bug) that fails is reported, not counted as failed.
  else if (/^ {4}not ok \d+/.test(line) && !/ # TODO\b/.test(line)) {
    failed++;
    fileFailures++;
  } else if (/^# Subtest: /.test(line)) fileFailures = 0;
  else if (/^not ok \d+/.test(line)) {
    if (fileFailures === 0) failed++;
    fileFailures = 0;
  } else if (/^ok \d+/.test(line)) fileFailures = 0;
}
console.log(`${passed} passed, ${failed} failed`);
