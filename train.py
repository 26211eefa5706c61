from cytobench.tool_dirs import use_private_tool_dirs

use_private_tool_dirs()  # before torch is imported: its caches go to a private temp folder, not $TMPDIR

from cytobench.train import main  # noqa: E402

main()
