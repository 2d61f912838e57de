import { writeSyntheticFamily } from '/work/wt/compact/dist/lib/synth/family.js';
const f = await writeSyntheticFamily(process.argv[2], { dtype: 'BF16', bytes: Number(process.argv[3]), shards: 4, hidden: 2048 });
console.log(JSON.stringify(f));
