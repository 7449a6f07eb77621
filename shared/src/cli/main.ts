// `membrane`: the CLI executable (the command tree is in program.ts).
import { buildProgram, explain } from './program.ts';

buildProgram()
  .parseAsync(process.argv)
  .catch((e: unknown) => {
    process.stderr.write(explain(e));
    process.exit(1);
  });
