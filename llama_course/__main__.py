import sys

from llama_course.commands.cli import main

sys.exit(main())
