// Name patterns of Hubble's fqdn and node_name filters: "*" stands for any run of name characters,
// and a node pattern may name its cluster ("prod/node-*", "prod/" for every node of a cluster). Pure.

export class PatternError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PatternError';
  }
}

const ANY_NAME = '[-0-9_a-z]+(?:\\.[-0-9_a-z]+)*';

function nameRegex(pattern: string): string {
  const p = pattern.trim().replace(/\.$/, '').toLowerCase();
  if (!p) throw new PatternError('empty pattern');
  if (p.endsWith('.')) throw new PatternError(`"${pattern}": more than one trailing dot`);
  let out = '';
  for (const ch of p) {
    if (ch === '*') out += '[-.0-9a-z]*';
    else if (ch === '.') out += '\\.';
    else if (/[-0-9_a-z]/.test(ch)) out += ch;
    else throw new PatternError(`"${pattern}": "${ch}" cannot appear in a name pattern`);
  }
  return out;
}

/** Matches a DNS name against any of the patterns ("*.example.com", "api.example.com"). */
export function fqdnMatcher(patterns: string[]): (name: string) => boolean {
  const re = new RegExp(`^(?:${patterns.map(nameRegex).join('|')})$`);
  return (name) => re.test(name.replace(/\.$/, '').toLowerCase());
}

/** Matches "cluster/node" names; a node name without a cluster belongs to `defaultCluster`. */
export function nodeNameMatcher(patterns: string[], defaultCluster: string): (nodeName: string) => boolean {
  const parts = patterns.map((p) => {
    if (!p) throw new PatternError('empty pattern');
    const elems = p.split('/');
    if (elems.length > 2) throw new PatternError(`"${p}": at most one "/" (cluster/node)`);
    const [cluster, node] = elems.length === 2 ? elems : ['', elems[0]];
    return `${cluster ? nameRegex(cluster) : ANY_NAME}/${node ? nameRegex(node) : ANY_NAME}`;
  });
  const re = new RegExp(`^(?:${parts.join('|')})$`);
  return (nodeName) => {
    if (!nodeName) return false;
    const full = nodeName.includes('/') ? nodeName : `${defaultCluster}/${nodeName}`;
    return re.test(full.toLowerCase());
  };
}
