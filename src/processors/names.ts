/** How a processor appears in the job table: its task, and the lock each version's runs take. */
export function processorTask(name: string): string {
  return `processor:${name}`;
}

export function processorLock(name: string, version: number): string {
  return `processor:${name}@${version}`;
}
