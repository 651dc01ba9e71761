export { allCommands, commands } from './commands.js';
